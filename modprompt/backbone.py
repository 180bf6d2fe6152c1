"""Frozen backbones loaded from local Hugging Face folders.

The prompt machinery needs four things from a backbone and nothing else: the list of transformer
blocks (to inject prompts at every layer), the hidden size, the attention kind (bidirectional or
causal: it decides what an option token can see) and the tokenizer. :class:`Backbone` exposes exactly
those over three model families: encoder-only (BERT-like), decoder-only (Gemma/Llama-like), and the
encoder of an encoder-decoder model (BART/CPT/T5-like). Only the transformer body is loaded, never a
language-model head: the MRC head needs hidden states, and Gemma's 262k-row vocabulary projection
would otherwise be the costliest matmul of every step.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Names that resolve to a packaged backbone instead of a local folder.
EMBEDDED_DEFAULT = "gemma-3-270m"


@dataclass(frozen=True)
class BackboneInfo:
    """What identifies a backbone's shape; a prompt bank records it and is checked against it."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    causal: bool
    vocab_size: int

    def to_dict(self) -> dict:
        return asdict(self)


class Backbone(nn.Module):
    """A frozen transformer body, its tokenizer, and the facts prompt methods need."""

    def __init__(self, body: nn.Module, tokenizer, info: BackboneInfo, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.body = body
        self.tokenizer = tokenizer
        self.info = info
        self.blocks = blocks

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def causal(self) -> bool:
        return self.info.causal

    @property
    def device(self) -> torch.device:
        return next(self.body.parameters()).device

    def freeze(self) -> Backbone:
        """Stop gradients to every backbone weight and switch off dropout."""
        self.body.requires_grad_(False)
        self.body.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states, shape (batch, tokens, hidden)."""
        return self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def load_backbone(name_or_path: str | Path, *, freeze: bool = True) -> Backbone:
    """Load a backbone from a local Hugging Face folder, or the embedded default by its name.

    Nothing is downloaded: ``name_or_path`` is a folder holding ``config.json``, the weights and the
    tokenizer, or ``"gemma-3-270m"`` for the embedded default (see :mod:`modprompt.gemma`).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if str(name_or_path) == EMBEDDED_DEFAULT:
        from modprompt.gemma import gemma_path

        path = gemma_path()
    else:
        path = Path(name_or_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model folder (no config.json); pass a local folder or "
                f"{EMBEDDED_DEFAULT!r} for the embedded default"
            )
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as err:
        raise RuntimeError(f"could not load the model weights in {path}: {err}") from err
    if getattr(config, "is_encoder_decoder", False):
        body = model.get_encoder()
        causal = False
    else:
        body = model
        causal = _is_causal(config)
    blocks = find_blocks(body, _num_layers(config))
    info = BackboneInfo(
        name=path.name if str(name_or_path) != EMBEDDED_DEFAULT else EMBEDDED_DEFAULT,
        model_type=config.model_type,
        num_layers=len(blocks),
        hidden_size=_hidden_size(config),
        causal=causal,
        vocab_size=len(tokenizer),
    )
    backbone = Backbone(body, tokenizer, info, blocks)
    logger.info("loaded backbone %s from %s", info, path)
    return backbone.freeze() if freeze else backbone


def resolve_backbone(backbone: Backbone | str | Path | None, recorded: dict | None = None) -> Backbone:
    """A loaded backbone: the one given, else the ``recorded`` one (a saved :class:`BackboneInfo`) when that
    is the embedded default; a local folder can't be found from its name alone."""
    if isinstance(backbone, Backbone):
        return backbone
    if backbone is None:
        name = recorded["name"] if recorded else EMBEDDED_DEFAULT
        if name != EMBEDDED_DEFAULT:
            raise ValueError(f"this was made on the local backbone folder {name!r}; pass its path (--backbone PATH)")
        backbone = name
    return load_backbone(backbone)


def check_backbone(recorded: dict, backbone: Backbone, what: str) -> None:
    """``what`` was saved on the backbone ``recorded``: another shape is an error naming the dimension,
    another name only a warning."""
    for key in ("model_type", "num_layers", "hidden_size", "vocab_size"):
        if recorded[key] != getattr(backbone.info, key):
            raise ValueError(
                f"{what} does not fit the backbone: {key} is {recorded[key]!r} there "
                f"but {getattr(backbone.info, key)!r} in backbone {backbone.info.name!r}"
            )
    if recorded["name"] != backbone.info.name:
        logger.warning("%s was made on backbone %s; using %s", what, recorded["name"], backbone.info.name)


def find_blocks(body: nn.Module, num_layers: int) -> nn.ModuleList:
    """The body's list of transformer blocks: the shallowest ``ModuleList`` with one entry per layer."""
    candidates = [
        (name.count("."), name, module)
        for name, module in body.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers
    ]
    if not candidates:
        raise ValueError(f"found no list of {num_layers} transformer blocks in {type(body).__name__}")
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _is_causal(config) -> bool:
    if getattr(config, "is_decoder", False):
        return True
    return any(arch.endswith("ForCausalLM") for arch in (getattr(config, "architectures", None) or []))


def _num_layers(config) -> int:
    for key in ("num_hidden_layers", "encoder_layers", "num_layers", "n_layer"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the number of layers of a {config.model_type} config")


def _hidden_size(config) -> int:
    for key in ("hidden_size", "d_model", "n_embd"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the hidden size of a {config.model_type} config")
