"""Deep modular prompts on a frozen backbone: injection, the full model, and bank save/load.

Injection follows MP2: the layer's prompt is added to the hidden states at the n placeholder
positions (right after the first token) at the input of every transformer block. It is done with
forward pre-hooks that exist only while :meth:`PromptInjector.inject` is active, so the backbone's
own code is never copied and, outside that context, its outputs are bit-identical to the bare model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from modprompt.backbone import Backbone
from modprompt.head import SpanHead
from modprompt.hooks import hooked
from modprompt.modular.bank import PromptBank
from modprompt.modular.config import ModularPromptConfig
from modprompt.modular.router import Router
from modprompt.saved import read_folder_config, write_folder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "bank_config.json"
WEIGHTS_NAME = "bank.safetensors"
#: the banks shipped inside the package (one folder each: the released bank and earlier releases)
SHIPPED_BANKS = Path(__file__).parents[1] / "banks"
#: Placeholders start right after the first token (CLS or BOS), as in MP2.
PROMPT_OFFSET = 1
#: the bank file's tensors: key in the file -> the model's attribute
_SAVED = {
    "bank.modules_z": "bank.modules_z",
    "bank.projection": "bank.projection",
    "bank.layer_scale": "bank.layer_scale",
    "router.logits": "router.logits",
    "head.weight": "head.proj.weight",
    "head.bias": "head.proj.bias",
}


class PromptInjector:
    """Adds prompts of shape (batch, layers, n, hidden) at the placeholder positions of every block."""

    def __init__(self, blocks: nn.ModuleList, offset: int = PROMPT_OFFSET) -> None:
        self.blocks = blocks
        self.offset = offset

    @contextmanager
    def inject(self, prompts: torch.Tensor) -> Iterator[None]:
        if prompts.shape[1] != len(self.blocks):
            raise ValueError(f"prompts for {prompts.shape[1]} layers, backbone has {len(self.blocks)}")
        with hooked(((block, self._hook(prompts[:, layer])) for layer, block in enumerate(self.blocks)), pre=True):
            yield

    def _hook(self, prompt: torch.Tensor):
        start, stop = self.offset, self.offset + prompt.shape[1]

        def add_prompt(hidden: torch.Tensor) -> torch.Tensor:
            middle = hidden[:, start:stop] + prompt.to(hidden.dtype)
            return torch.cat([hidden[:, :start], middle, hidden[:, stop:]], dim=1)

        def hook(module, args, kwargs):
            if args:
                return (add_prompt(args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = add_prompt(kwargs["hidden_states"])
            return args, kwargs

        return hook


class ModularPromptModel(nn.Module):
    """A frozen backbone with a deep modular prompt bank, per-task routers and the MRC span head."""

    def __init__(self, backbone: Backbone, config: ModularPromptConfig, tasks: list[str]) -> None:
        super().__init__()
        _check_shape(config, backbone)
        self.backbone = backbone
        self.config = config
        self.bank = PromptBank(config)
        self.router = Router(tasks, config.num_layers, config.num_modules, shared=config.router == "shared")
        self.head = SpanHead(config.hidden_size)
        self.injector = PromptInjector(backbone.blocks)

    @property
    def tasks(self) -> list[str]:
        return self.router.tasks

    def task_ids(self, tasks: list[str]) -> torch.Tensor:
        ids = [self.router.task_index(t) for t in tasks]
        return torch.tensor(ids, dtype=torch.long, device=self.router.logits.device)

    def prompts(self, task_ids: torch.Tensor, temperature: float | None = None, generator=None) -> torch.Tensor:
        return self.bank.prompts(self.router(task_ids, temperature, generator))

    def forward(
        self, batch: dict, task_ids: torch.Tensor, temperature: float | None = None, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits (batch, tokens). ``temperature`` set: sampled routing (training)."""
        return self.forward_with_prompts(batch, self.prompts(task_ids, temperature, generator))

    def forward_with_prompts(self, batch: dict, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for explicit deep prompts (batch, layers, n, hidden), e.g. from a black-box search."""
        with self.injector.inject(prompts):
            hidden = self.backbone(batch["input_ids"], batch["attention_mask"])
        return self.head(hidden)

    def calibrate(self, batch: dict) -> torch.Tensor:
        """Set each layer's prompt scale to the RMS of the hidden states entering it on ``batch``."""
        self.bank.layer_scale.copy_(layer_rms(self.backbone, batch))
        return self.bank.layer_scale

    def replace_router(self, tasks: list[str], shared: bool | None = None) -> Router:
        """A fresh router for new tasks (adaptation); the bank and head are kept."""
        shared = self.router.shared if shared is None else shared
        self.router = Router(tasks, self.config.num_layers, self.config.num_modules, shared=shared)
        return self.router

    # -- the released bank: safetensors + JSON config -------------------------------------------

    def save_pretrained(self, directory: str | Path, training: dict | None = None) -> Path:
        """Write the bank, routers and head (never the backbone) as safetensors plus a JSON config.

        ``training`` (steps, examples and tokens seen, whether the run finished...) is recorded in the
        config so that a bank always says how much it was trained.
        """
        meta = {
            "backbone": self.backbone.info.to_dict(),
            "prompt": self.config.to_dict(),
            "intrinsic_size": self.config.intrinsic_size,
            "tasks": self.router.tasks,
            "router_shared": self.router.shared,
            "training": training or {},
        }
        tensors = {key: attrgetter(path)(self) for key, path in _SAVED.items()}
        return write_folder(directory, CONFIG_NAME, FORMAT_VERSION, meta, {WEIGHTS_NAME: tensors})

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: Backbone) -> ModularPromptModel:
        """Load a saved bank onto ``backbone``; a bank made for another shape fails naming the dimension."""
        directory = Path(directory)
        meta = read_bank_config(directory)
        config = ModularPromptConfig.from_dict(meta["prompt"])
        saved = meta["backbone"]
        if saved["name"] != backbone.info.name or saved["model_type"] != backbone.info.model_type:
            logger.warning(
                "bank %s was trained on backbone %s (%s); loading it onto %s (%s)",
                directory, saved["name"], saved["model_type"], backbone.info.name, backbone.info.model_type,
            )
        model = cls(backbone, config, meta["tasks"])
        model.router.shared = meta["router_shared"]
        model.load_weights(directory)
        return model

    def load_weights(self, directory: str | Path, router: bool = True) -> None:
        """Copy the bank, head and (``router``) routers saved in ``directory`` into this model.

        Without ``router`` the model keeps its own routers: a bank warm-starts a run over other tasks or
        with other routes. A bank of another shape fails naming the dimension.
        """
        saved = ModularPromptConfig.from_dict(read_bank_config(directory)["prompt"])
        for name in ("num_layers", "hidden_size", "num_modules", "num_tokens", "rank"):
            if getattr(saved, name) != getattr(self.config, name):
                raise ValueError(
                    f"bank {directory} does not fit this model: {name} is {getattr(saved, name)} in the bank "
                    f"but {getattr(self.config, name)} here"
                )
        weights = load_file(Path(directory) / WEIGHTS_NAME)
        with torch.no_grad():
            for key, path in _SAVED.items():
                if key != "router.logits":
                    attrgetter(path)(self).copy_(weights[key])
            if router:  # a new parameter: the saved routers may be for other tasks
                self.router.logits = nn.Parameter(weights["router.logits"].to(self.router.logits.device))


def read_bank_config(directory: str | Path) -> dict:
    """The JSON config of the bank saved in ``directory`` (prompt config, backbone identity, tasks, provenance)."""
    return read_folder_config(directory, CONFIG_NAME, FORMAT_VERSION, "prompt bank")


@torch.no_grad()
def layer_rms(backbone: Backbone, batch: dict) -> torch.Tensor:
    """RMS of the hidden states entering each block on ``batch``: (layers,).

    Only real tokens after the first count: the first token (BOS/CLS) often carries an outlying norm.
    """
    mask = batch["attention_mask"].clone()
    mask[:, 0] = 0
    rms: list[torch.Tensor] = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        rms.append((hidden.pow(2).mean(-1) * mask).sum().div(mask.sum()).sqrt())

    with hooked(((block, record) for block in backbone.blocks), pre=True):
        backbone(batch["input_ids"], batch["attention_mask"])
    return torch.stack(rms)


def _check_shape(config: ModularPromptConfig, backbone: Backbone) -> None:
    for name, expected, actual in (
        ("num_layers", config.num_layers, backbone.num_layers),
        ("hidden_size", config.hidden_size, backbone.hidden_size),
    ):
        if expected != actual:
            raise ValueError(
                f"prompt bank does not fit the backbone: {name} is {expected} in the bank "
                f"but {actual} in backbone {backbone.info.name!r}"
            )
