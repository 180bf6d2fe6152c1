"""Child-Tuning (Xu et al., EMNLP 2021): fine-tune only a "child network" of the full model.

Two variants, both an optimiser-level change that works with any torch model:

* **Child-Tuning_F** (task-free): at every step each gradient entry is kept with probability
  ``reserve_p`` and scaled by ``1 / reserve_p``; the rest are zeroed. As in the authors' reference
  implementation (``alibaba/AliceMind``, ``ChildTuning/ChildTuningOptimizer.py``), the masked gradient
  then goes through an *ordinary* AdamW step. So an entry whose gradient was dropped this step still
  sees its moments decay (``m <- beta1 m``, ``v <- beta2 v``), still moves by its remaining momentum
  ``m / (sqrt(v) + eps)``, and is still shrunk by the decoupled weight decay: the mask selects which
  gradient entries *reach* the optimiser, not which weights move. (On the very first step, with
  zero moments and no weight decay, exactly the kept entries move.) The gradient is masked in place,
  as in the reference, so ``p.grad`` holds the gradient the step used.
* **Child-Tuning_D** (task-driven): before training, :func:`fisher_information` scores every entry by
  the diagonal Fisher information on the task's training data and :func:`child_masks` keeps the
  top ``reserve_p`` fraction; only that child network is ever updated. Zeroing the other gradient
  entries is *not* enough with AdamW (the reference does only that): decoupled weight decay would
  still shrink them every step, and any non-zero moment would still move them. So the masked step
  here gathers the child entries of a parameter, runs torch's own AdamW arithmetic on them alone
  (moments are kept only for child entries) and scatters them back; every other entry is never
  written and stays bit-identical for the whole run. Parameters that have no mask (in the
  reference: everything outside the transformer layers, e.g. embeddings and the new head) get an
  ordinary AdamW update.

Both variants run the same arithmetic as ``torch.optim.AdamW`` (its functional form), so with every
entry kept they reproduce it exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.adamw import adamw

logger = logging.getLogger(__name__)

MODES = ("F", "D")
_GENERATOR_KEY = "child_tuning_generator"


class ChildTuningAdamW(torch.optim.AdamW):
    """AdamW restricted to a child network: a fresh Bernoulli one per step (``mode="F"``) or a fixed one (``"D"``).

    ``mode="F"``: ``reserve_p`` is the probability of keeping each gradient entry; ``generator``
    (optional) makes the masks reproducible and is saved in :meth:`state_dict`.
    ``mode="D"``: ``masks`` maps parameters (the tensors themselves, as passed in ``params``) to
    boolean tensors of their shape, True inside the child network (see :func:`child_masks`);
    parameters without a mask are updated in full. ``reserve_p`` is unused in this mode (the masks
    already carry the fraction).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        mode: str,
        reserve_p: float = 0.3,
        masks: Mapping[torch.Tensor, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        maximize: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Child-Tuning mode must be one of {MODES}, not {mode!r}")
        if not 0.0 < reserve_p <= 1.0:
            raise ValueError(f"reserve_p must be in (0, 1], not {reserve_p}")
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=False)
        self.mode = mode
        self.reserve_p = reserve_p
        self.generator = generator
        self._child_index: dict[int, torch.Tensor] = {}
        if mode == "F":
            if masks is not None:
                raise ValueError("Child-Tuning_F draws its masks every step; pass masks only with mode='D'")
            return
        if not masks:
            raise ValueError("Child-Tuning_D needs the child network's masks (see child_masks)")
        own = {id(p) for group in self.param_groups for p in group["params"]}
        kept = total = 0
        for p, mask in masks.items():
            if id(p) not in own:
                raise ValueError(f"a mask of shape {tuple(mask.shape)} belongs to no parameter of this optimiser")
            if mask.dtype != torch.bool or mask.shape != p.shape:
                raise ValueError(f"a mask must be a bool tensor of its parameter's shape {tuple(p.shape)}, "
                                 f"not {mask.dtype} {tuple(mask.shape)}")
            if not p.is_contiguous():
                raise ValueError(f"a masked parameter must be contiguous (shape {tuple(p.shape)})")
            self._child_index[id(p)] = mask.flatten().nonzero().squeeze(1).to(p.device)
            kept += int(mask.sum())
            total += mask.numel()
        logger.info("Child-Tuning_D: %d of %d masked entries (%.3f) in the child network", kept, total, kept / total)

    def _drop_gradient(self, grad: torch.Tensor) -> None:
        """Keep each entry with probability reserve_p, scaled by 1 / reserve_p; zero the rest (in place)."""
        device = self.generator.device if self.generator is not None else grad.device
        keep = torch.rand(grad.shape, generator=self.generator, device=device) < self.reserve_p
        grad.mul_(keep.to(grad.device)).div_(self.reserve_p)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ChildTuningAdamW does not support sparse gradients")
                if self.mode == "F":
                    self._drop_gradient(p.grad)
                index = self._child_index.get(id(p))
                if index is None:
                    target, grad = p, p.grad
                else:
                    target, grad = p.view(-1).index_select(0, index), p.grad.reshape(-1).index_select(0, index)
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(target, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(target, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(target, memory_format=torch.preserve_format)
                adamw(
                    [target],
                    [grad],
                    [state["exp_avg"]],
                    [state["exp_avg_sq"]],
                    [state["max_exp_avg_sq"]] if group["amsgrad"] else [],
                    [state["step"]],
                    foreach=False,
                    amsgrad=group["amsgrad"],
                    beta1=beta1,
                    beta2=beta2,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                )
                if index is not None:
                    p.view(-1).index_copy_(0, index, target)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.generator is not None:
            state[_GENERATOR_KEY] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop(_GENERATOR_KEY, None)
        if generator_state is not None and self.generator is not None:
            self.generator.set_state(generator_state)
        super().load_state_dict(state_dict)


def fisher_information(
    module: nn.Module,
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Iterable[Any],
    params: Mapping[str, torch.Tensor] | None = None,
    max_grad_norm: float | None = 1.0,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of ``params`` (default: every trainable parameter of ``module``).

    Follows the reference implementation (``ChildTuningD.py``, ``calculate_fisher``): one backward
    pass per batch of the task's training data, each parameter's gradient clipped on its own to
    ``max_grad_norm`` (None: no clipping), squared, and averaged over the batches. With one-example
    batches and no clipping this is the paper's formula exactly (the mean squared per-example
    gradient); larger batches square the batch-mean gradient, as the reference does.
    ``loss_fn(batch)`` returns the batch's mean training loss. The scored parameters get gradients
    whether or not they require them now (their ``requires_grad`` is restored afterwards); the module
    is left in whatever train/eval mode the caller set, and its gradients are cleared before and after.
    """
    if params is None:
        params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("no parameters to score")
    # Half-precision squares of small gradients underflow; accumulate in at least float32.
    scores = {name: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
              for name, p in params.items()}
    required = {name: p.requires_grad for name, p in params.items()}
    module.zero_grad(set_to_none=True)
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        for batch in batches:
            loss_fn(batch).backward()
            for name, p in params.items():
                if p.grad is None:
                    continue
                if max_grad_norm:
                    nn.utils.clip_grad_norm_(p, max_grad_norm)
                scores[name] += p.grad.to(scores[name].dtype).pow(2)
            module.zero_grad(set_to_none=True)
            count += 1
    finally:
        for name, p in params.items():
            p.requires_grad_(required[name])
        module.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("fisher_information needs at least one batch")
    return {name: score / count for name, score in scores.items()}


def child_masks(fisher: Mapping[str, torch.Tensor], reserve_p: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping the ``reserve_p`` fraction of entries with the highest Fisher score.

    The ranking is global over all scored parameters, as in the reference implementation, which
    keeps every entry at or above the (1 - reserve_p) percentile. Here exactly
    ``round(reserve_p * n)`` entries are kept (at least one): ties at the threshold are broken by
    position (parameter order, then flattened index), so large tied groups (e.g. entries with zero
    gradient) cannot inflate the child network.
    """
    if not 0.0 < reserve_p <= 1.0:
        raise ValueError(f"reserve_p must be in (0, 1], not {reserve_p}")
    if not fisher:
        raise ValueError("no Fisher scores to select from")
    flat = torch.cat([score.detach().flatten().float().cpu() for score in fisher.values()])
    if torch.isnan(flat).any():
        raise ValueError("Fisher scores contain NaN (a diverged loss?)")
    n = flat.numel()
    k = max(1, round(reserve_p * n))
    keep = torch.ones(n, dtype=torch.bool)
    if k < n:
        threshold = torch.kthvalue(flat, n - k + 1).values  # the k-th largest score
        keep = flat > threshold
        missing = k - int(keep.sum())
        tied = (flat == threshold).nonzero().squeeze(1)
        keep[tied[:missing]] = True
    masks, offset = {}, 0
    for name, score in fisher.items():
        masks[name] = keep[offset : offset + score.numel()].view(score.shape).to(score.device)
        offset += score.numel()
    return masks
