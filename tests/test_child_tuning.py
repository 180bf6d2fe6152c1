"""Child-Tuning: per-step Bernoulli gradient masks (F), a frozen-outside child network (D), Fisher scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.loop import fit
from modprompt.adapt.methods import create_method
from modprompt.backbone import load_backbone
from modprompt.baselines.adapt_methods import RESERVE_P
from modprompt.baselines.child_tuning import ChildTuningAdamW, child_masks, fisher_information
from modprompt.data.mrc import MRCExample


def _fresh_gradient(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A gradient with no zero entry, so a zero after the step can only come from the mask."""
    p.grad = torch.rand(p.shape, generator=generator) + 0.5
    return p.grad.clone()


def test_child_f_keeps_each_gradient_entry_with_probability_p():
    reserve_p = 0.3
    p = nn.Parameter(torch.randn(100, 200))  # 20k entries: the kept fraction's std is 0.0032
    data = torch.Generator().manual_seed(1)
    opt = ChildTuningAdamW([p], lr=1e-3, weight_decay=0.0, mode="F", reserve_p=reserve_p,
                           generator=torch.Generator().manual_seed(2))
    masks = []
    for _ in range(5):
        grad = _fresh_gradient(p, data)
        opt.step()
        kept = p.grad != 0
        assert abs(kept.float().mean().item() - reserve_p) < 0.02
        assert torch.equal(p.grad[kept], grad[kept] / reserve_p)  # kept entries are scaled by 1/p
        masks.append(kept)
    # A fresh, independent mask every step: two steps' masks overlap in about p^2 of the entries.
    overlap = (masks[0] & masks[1]).float().mean().item()
    assert abs(overlap - reserve_p**2) < 0.02


def test_child_f_moves_exactly_the_kept_entries_then_follows_adamw_momentum():
    # The reference feeds the masked gradient to an ordinary AdamW step: on the first step (zero
    # moments, no decay) exactly the kept entries move; later, an entry whose gradient was dropped
    # still moves by its momentum, and an entry never kept never moves.
    p = nn.Parameter(torch.randn(100, 100))
    data = torch.Generator().manual_seed(3)
    opt = ChildTuningAdamW([p], lr=1e-2, weight_decay=0.0, mode="F", reserve_p=0.4,
                           generator=torch.Generator().manual_seed(4))
    before = p.detach().clone()
    _fresh_gradient(p, data)
    opt.step()
    first = p.grad != 0
    assert torch.equal(p.detach() != before, first)
    after_first = p.detach().clone()
    _fresh_gradient(p, data)
    opt.step()
    second = p.grad != 0
    moved = p.detach() != after_first
    assert torch.equal(moved, first | second)
    assert (first & ~second).any() and moved[first & ~second].all()


def test_child_f_masks_are_reproducible_and_resume_with_the_optimizer_state():
    def run(steps, opt=None, p=None):
        if opt is None:
            p = nn.Parameter(torch.ones(50, 50))
            opt = ChildTuningAdamW([p], lr=1e-2, mode="F", reserve_p=0.5, generator=torch.Generator().manual_seed(7))
        data = torch.Generator().manual_seed(len(steps))
        grads = []
        for _ in steps:
            _fresh_gradient(p, data)
            opt.step()
            grads.append(p.grad.clone())
        return opt, p, grads

    opt_a, p_a, grads_a = run(range(3))
    state = opt_a.state_dict()
    _, _, more_a = run(range(2), opt_a, p_a)
    opt_b, p_b, grads_b = run(range(3))
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    opt_b.generator.manual_seed(123)  # forget the generator's position; the state dict restores it
    opt_b.load_state_dict(state)
    _, _, more_b = run(range(2), opt_b, p_b)
    assert all(torch.equal(x, y) for x, y in zip(more_a, more_b))


def _tiny_regression(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]

    def loss_fn(batch):
        inputs, targets = batch
        return nn.functional.mse_loss(model(inputs), targets)

    return model, batches, loss_fn


def test_child_d_leaves_entries_outside_the_child_bit_identical():
    model, batches, loss_fn = _tiny_regression()
    params = dict(model.named_parameters())
    masks = child_masks(fisher_information(model, loss_fn, batches), reserve_p=0.3)
    before = {name: p.detach().clone() for name, p in params.items()}
    opt = ChildTuningAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, mode="D",
                           masks={params[name]: mask for name, mask in masks.items()})
    for _ in range(5):
        for batch in batches:
            opt.zero_grad()
            loss_fn(batch).backward()
            opt.step()
    for name, p in params.items():
        outside, inside = ~masks[name], masks[name]
        assert torch.equal(p.detach()[outside], before[name][outside]), name
        assert (p.detach()[inside] != before[name][inside]).all(), name
    # Why a masked step is needed: zeroing the gradient and taking a plain AdamW step moves them.
    model2, batches2, loss_fn2 = _tiny_regression()
    plain = torch.optim.AdamW(model2.parameters(), lr=1e-2, weight_decay=0.1)
    weight = model2[0].weight
    start = weight.detach().clone()
    outside = ~masks["0.weight"]
    loss_fn2(batches2[0]).backward()
    weight.grad[outside] = 0.0
    plain.step()
    assert (weight.detach()[outside] != start[outside]).all()


def test_child_d_with_every_entry_kept_is_exactly_adamw():
    model_a, batches, loss_a = _tiny_regression()
    model_b, _, loss_b = _tiny_regression()
    masks = {p: torch.ones_like(p, dtype=torch.bool) for p in model_a.parameters()}
    child = ChildTuningAdamW(model_a.parameters(), lr=1e-2, weight_decay=0.05, mode="D", masks=masks)
    plain = torch.optim.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.05, foreach=False)
    for _ in range(3):
        for batch in batches:
            for opt, model, loss_fn in ((child, model_a, loss_a), (plain, model_b, loss_b)):
                opt.zero_grad()
                loss_fn(batch).backward()
                opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


def test_child_tuning_rejects_inconsistent_settings():
    p = nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mode"):
        ChildTuningAdamW([p], mode="X")
    with pytest.raises(ValueError, match="needs the child network"):
        ChildTuningAdamW([p], mode="D")
    with pytest.raises(ValueError, match="only with mode='D'"):
        ChildTuningAdamW([p], mode="F", masks={p: torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        ChildTuningAdamW([p], mode="D", masks={p: torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="belongs to no parameter"):
        ChildTuningAdamW([p], mode="D", masks={nn.Parameter(torch.zeros(2)): torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="reserve_p"):
        ChildTuningAdamW([p], mode="F", reserve_p=0.0)


def test_fisher_scores_equal_a_hand_computation():
    # y = W2 W1 x, loss = mean over the batch of 0.5 ||y - t||^2, so per batch (X: B x 4, T: B x 2):
    # R = (X W1^T W2^T - T) / B, dL/dW2 = R^T (X W1^T), dL/dW1 = (R W2)^T X.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    w1, w2 = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    batches = [(torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)) for _ in range(3)]

    def loss_fn(batch):
        x, t = batch
        return 0.5 * (model(x) - t).pow(2).sum(-1).mean()

    def hand(clip):
        sums = [torch.zeros_like(w1), torch.zeros_like(w2)]
        for x, t in batches:
            r = (x @ w1.T @ w2.T - t) / len(x)
            grads = [(r @ w2).T @ x, r.T @ (x @ w1.T)]
            for total, g in zip(sums, grads):
                if clip is not None:
                    g = g * min(1.0, clip / (float(g.norm()) + 1e-6))  # torch's per-tensor clip
                total += g**2
        return [s / len(batches) for s in sums]

    for clip in (None, 0.05):
        fisher = fisher_information(model, loss_fn, batches, max_grad_norm=clip)
        expected = hand(clip)
        assert set(fisher) == {"0.weight", "1.weight"}
        torch.testing.assert_close(fisher["0.weight"], expected[0], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(fisher["1.weight"], expected[1], rtol=1e-10, atol=1e-14)
    assert fisher_information(model, loss_fn, batches, max_grad_norm=None)["0.weight"].max() > 0.05**2  # clip bit
    assert all(p.grad is None for p in model.parameters())  # no gradient leaks into training


def test_child_masks_keep_exactly_the_top_fraction_globally():
    fisher = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
    masks = child_masks(fisher, reserve_p=3 / 7)  # 5 and 4, then the first of the tied 3s
    assert masks["a"].tolist() == [True, False, True]
    assert masks["b"].tolist() == [[False, False], [False, True]]
    scores = {"x": torch.rand(40, 30), "y": torch.rand(1000), "z": torch.zeros(500)}  # 500 ties at zero
    for reserve_p in (0.05, 0.3, 0.9):
        masks = child_masks(scores, reserve_p)
        kept = torch.cat([m.flatten() for m in masks.values()])
        flat = torch.cat([s.flatten() for s in scores.values()])
        assert int(kept.sum()) == round(reserve_p * flat.numel())
        assert flat[kept].min() >= flat[~kept].max()
    with pytest.raises(ValueError, match="NaN"):
        child_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)


SENTENCES = ["房间很干净", "服务太差了", "早餐很丰富", "再也不来了", "位置很方便", "隔音很糟糕", "床很舒服", "前台态度差"]
TRAIN = [MRCExample("senti", "这条评论的情感是？", s, ("正面", "负面"), label=i % 2) for i, s in enumerate(SENTENCES)]


def _adapt(backbone_path, method_name):
    """Adapt a fresh method to TRAIN; returns it and every parameter's value before training (by id)."""
    backbone = load_backbone(backbone_path)
    config = AdaptConfig(method=method_name, batch_size=4, max_epochs=2, max_length=64)
    method = create_method(backbone, config, "senti")
    encoder = method.encoder()
    method.prepare(encoder, TRAIN)
    before = {id(p): p.detach().clone() for p in method.parameters()}
    fit(method, encoder, TRAIN, [], config)  # no dev set: the last state is kept
    return method, before


def test_child_d_method_trains_only_its_child_network_in_the_blocks(tiny_decoder):
    method, before = _adapt(tiny_decoder, "child-d")
    kept = total = changed_inside = 0
    for name, p in method.backbone.blocks.named_parameters():
        mask, moved = method.child[name], p.detach() != before[id(p)]
        assert not moved[~mask].any(), name  # outside the child: bit-identical after training
        kept, total, changed_inside = kept + int(mask.sum()), total + mask.numel(), changed_inside + int(moved[mask].sum())
    assert kept == round(RESERVE_P * total) and changed_inside > 0.95 * kept
    assert (method.head.proj.weight != before[id(method.head.proj.weight)]).all()  # the head trains in full
    assert method.trainable_parameters() == sum(p.numel() for p in method.parameters())  # as ft


def test_child_f_method_trains_through_the_child_tuning_optimizer(tiny_encoder):
    method, before = _adapt(tiny_encoder, "child-f")
    stage = method.stages()[0]
    optimizer = stage.optimizer(stage.param_groups)
    assert isinstance(optimizer, ChildTuningAdamW) and optimizer.mode == "F" and optimizer.reserve_p == RESERVE_P
    assert any(not torch.equal(p.detach(), before[id(p)]) for p in method.backbone.blocks.parameters())
