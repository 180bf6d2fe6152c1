"""The prompt bank: K prompt modules per layer in a low-rank intrinsic form.

Layer ``l`` holds intrinsic module matrices ``Z[l, k]`` of shape ``(n, r)`` and one projection
``W[l]`` of shape ``(r, hidden)``. Module ``k``'s prompt at layer ``l`` is ``Z[l, k] @ W[l]``; a routed
mix with weights ``w[l, k]`` is ``(Σ_k w[l, k] Z[l, k]) @ W[l]``, so mixing happens in the small
intrinsic space and one matmul per layer lifts it to hidden size.

Why this form: MP2 projects a d-dimensional intrinsic vector with a dense per-layer matrix of
``d × n × hidden`` numbers, which for Gemma 3 270M (18 layers, hidden 640, n 16) and d 500 is
~92M parameters (370 MB). Factoring the projection per token keeps the same linear structure
(prompt = A · z, with A = I_n ⊗ Wᵀ learned during pre-training) at ``r × hidden`` per layer, so the
released bank is a few hundred kilobytes. The black-box stage keeps what it needs: the learned
projection ``W`` and the intrinsic mix ``Σ_k w Z`` as the starting point of the per-layer CMA-ES
search over ``n × r`` numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from modprompt.modular.config import ModularPromptConfig


class PromptBank(nn.Module):
    def __init__(self, config: ModularPromptConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.modules_z = nn.Parameter(torch.randn(c.num_layers, c.num_modules, c.num_tokens, c.rank))
        self.projection = nn.Parameter(torch.randn(c.num_layers, c.rank, c.hidden_size) * c.init_std)
        # Pre-norm decoders grow their residual stream with depth (Gemma 3 270M: RMS ~1 at the first
        # block's input, ~1200 at the last), so a prompt of fixed size would vanish in deep layers.
        # Prompts are scaled by each layer's typical hidden-state RMS, measured once (see
        # ``ModularPromptModel.calibrate``), which keeps every layer's parameters on one scale.
        self.register_buffer("layer_scale", torch.ones(c.num_layers))

    def mix(self, weights: torch.Tensor) -> torch.Tensor:
        """Routed intrinsic prompts: weights (batch, layers, K) -> (batch, layers, n, r)."""
        return torch.einsum("blk,lknr->blnr", weights, self.modules_z)

    def project(self, intrinsic: torch.Tensor) -> torch.Tensor:
        """Lift intrinsic prompts (batch, layers, n, r) to hidden size: (batch, layers, n, hidden)."""
        return torch.einsum("blnr,lrh->blnh", intrinsic, self.projection * self.layer_scale[:, None, None])

    def prompts(self, weights: torch.Tensor) -> torch.Tensor:
        """Per-example deep prompts for routing weights (batch, layers, K)."""
        return self.project(self.mix(weights))
