"""Deep modular prompts on all three backbone kinds: injection, routing, the head and bank files."""

from __future__ import annotations

import pytest
import tiny
import torch

from modprompt.backbone import load_backbone
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.head import span_loss
from modprompt.modular.config import ModularPromptConfig
from modprompt.modular.model import ModularPromptModel
from modprompt.modular.router import Router, annealed_temperature, log_selection, route_weights

N_TOKENS = 4

EXAMPLES = [
    MRCExample("senti", "这条评论的情感是？", "房间很干净，服务也好。", ("正面", "负面"), label=0),
    MRCExample("senti", "这条评论的情感是？", "太差了，再也不来。", ("正面", "负面"), label=1),
    MRCExample("qa", "谁开发了这个游戏？", "《战国无双3》是由光荣开发的。", span=(10, 12), answers=("光荣",)),
]


@pytest.fixture(params=["encoder", "decoder", "encoder-decoder"])
def backbone(request):
    return load_backbone(request.getfixturevalue(f"tiny_{request.param.replace('-', '_')}"))


def _model(backbone, router="per_layer", seed=0):
    return tiny.random_bank(backbone, ["senti", "qa"], seed, num_tokens=N_TOKENS, router=router)


def _batch(backbone):
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(max_length=96, num_prompt_tokens=N_TOKENS))
    return encoder.collate(encoder.encode_all(EXAMPLES))


def test_backbone_facts(tiny_encoder, tiny_decoder, tiny_encoder_decoder):
    enc, dec, encdec = (load_backbone(p) for p in (tiny_encoder, tiny_decoder, tiny_encoder_decoder))
    assert (enc.causal, dec.causal, encdec.causal) == (False, True, False)
    assert all(b.num_layers == 2 and b.hidden_size == 32 for b in (enc, dec, encdec))
    assert dec.info.model_type == "gemma3_text"
    assert not any(p.requires_grad for p in dec.parameters())


def test_outputs_bit_identical_outside_injection(backbone):
    batch = _batch(backbone)
    before = backbone(batch["input_ids"], batch["attention_mask"])
    model = _model(backbone)
    model(batch, model.task_ids(["senti", "senti", "qa"]))  # hooks come and go with the call
    after = backbone(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(before, after)
    zero = torch.zeros(3, backbone.num_layers, N_TOKENS, backbone.hidden_size)
    with model.injector.inject(zero):
        injected_zero = backbone(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(before, injected_zero)


def test_prompt_changes_only_what_it_can_reach(backbone):
    batch = _batch(backbone)
    before = backbone(batch["input_ids"], batch["attention_mask"])
    prompts = torch.zeros(3, backbone.num_layers, N_TOKENS, backbone.hidden_size)
    prompts[:, 1] = 1.0  # only the second layer's prompt
    with _model(backbone).injector.inject(prompts):
        after = backbone(batch["input_ids"], batch["attention_mask"])
    changed = (after - before).abs().amax(-1) > 1e-6
    assert changed[:, 1 : 1 + N_TOKENS].all()
    if backbone.causal:
        assert not changed[:, 0].any()  # the first token cannot see later placeholders
    else:
        assert changed[:, -1].any()


def test_gradients_reach_bank_router_head_not_backbone(backbone):
    model = _model(backbone)
    batch = _batch(backbone)
    start, end = model(batch, model.task_ids(["senti", "senti", "qa"]), temperature=0.5)
    span_loss(start, end, batch).backward()
    for p in (model.bank.modules_z, model.bank.projection, model.router.logits, model.head.proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_router_shared_has_exactly_k_parameters_per_task():
    router = Router(["a"], num_layers=18, num_modules=8, shared=True)
    assert sum(p.numel() for p in router.parameters()) == 8
    weights = router(torch.tensor([0, 0]))
    assert weights.shape == (2, 18, 8)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 18), atol=1e-5)
    assert torch.equal(weights[0, 0], weights[0, 17])  # shared across layers


def test_router_sampling_and_inference():
    router = Router(["a", "b"], num_layers=3, num_modules=8)
    with torch.no_grad():
        router.logits[1] = 4.0
    ids = torch.tensor([0, 1])
    assert torch.equal(router(ids), router(ids))  # sigmoid at inference: deterministic
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(router(ids, 0.5, g1), router(ids, 0.5, g2))
    sample = log_selection(torch.zeros(10000), 0.1, torch.Generator().manual_seed(0)).exp()
    assert 0 <= sample.min() and sample.max() <= 1
    assert ((sample < 0.05) | (sample > 0.95)).float().mean() > 0.8  # low temperature: nearly binary
    assert abs(float(sample.mean()) - 0.5) < 0.03
    assert torch.allclose(router(ids, 1.0).sum(-1), torch.ones(2, 3), atol=1e-5)


def test_route_weights_sum_to_one_when_every_selection_underflows():
    # Negative logits at a low temperature: every relaxed sample underflows in float32, and the old
    # s / (Σ s + 1e-6) gave weights summing to ~0, silently shrinking the prompt.
    logits = torch.full((4, 3, 8), -20.0)
    for temperature in (0.1, 0.01, None):
        weights = route_weights(logits, temperature, torch.Generator().manual_seed(0))
        assert torch.allclose(weights.sum(-1), torch.ones(4, 3), atol=1e-6), temperature
        assert torch.isfinite(weights).all()
    assert torch.sigmoid(torch.tensor(-20.0 / 0.01)) == 0  # the underflow the test is about
    # Where nothing underflows the weights are exactly the normalised sigmoids.
    logits = torch.randn(5, 8)
    expected = torch.sigmoid(logits) / torch.sigmoid(logits).sum(-1, keepdim=True)
    assert torch.allclose(route_weights(logits), expected, atol=1e-6)


def test_temperature_annealing():
    assert annealed_temperature(0, 100, 1.0, 0.1) == 1.0
    assert annealed_temperature(100, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert annealed_temperature(50, 100, 1.0, 0.1) == pytest.approx(0.1**0.5)


def test_save_load_round_trip(backbone, tmp_path):
    model = _model(backbone, seed=3)
    batch = _batch(backbone)
    ids = model.task_ids(["senti", "senti", "qa"])
    expected = model(batch, ids)
    model.save_pretrained(tmp_path / "bank")
    loaded = ModularPromptModel.from_pretrained(tmp_path / "bank", backbone)
    assert loaded.tasks == ["senti", "qa"]
    for a, b in zip(expected, loaded(batch, ids)):
        assert torch.equal(a, b)


def test_wrong_backbone_names_the_dimension(tiny_encoder, tiny_decoder, tmp_path):
    enc = load_backbone(tiny_encoder)
    model = _model(enc)
    model.save_pretrained(tmp_path / "bank")
    dec = load_backbone(tiny_decoder)
    dec.info = type(dec.info)(**{**dec.info.to_dict(), "hidden_size": 48})
    with pytest.raises(ValueError, match="hidden_size is 32 in the bank but 48"):
        ModularPromptModel.from_pretrained(tmp_path / "bank", dec)


def test_not_a_bank_or_another_format_is_named(tiny_encoder, tmp_path):
    backbone = load_backbone(tiny_encoder)
    with pytest.raises(FileNotFoundError, match="holds no prompt bank"):
        ModularPromptModel.from_pretrained(tmp_path, backbone)
    _model(backbone).save_pretrained(tmp_path / "bank")
    config = tmp_path / "bank" / "bank_config.json"
    config.write_text(config.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ValueError, match="bank_config.json: prompt bank format 99, expected 1"):
        ModularPromptModel.from_pretrained(tmp_path / "bank", backbone)


def test_gemma_sized_bank_is_small(tmp_path):
    """A bank of the released shape (Gemma 3 270M: 18 layers, hidden 640; K 8, n 16, r 16; 35 upstream routers),
    saved, is under a megabyte. The backbone is Gemma-shaped where the bank sees it and tiny elsewhere."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tiny.save_tokenizer("bpe", tmp_path / "gemma-shaped")
    shape = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=640, num_hidden_layers=18, num_attention_heads=1,
                             num_key_value_heads=1, head_dim=8, intermediate_size=8, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    Gemma3ForCausalLM(shape).save_pretrained(tmp_path / "gemma-shaped")
    backbone = load_backbone(tmp_path / "gemma-shaped")
    model = tiny.random_bank(backbone, [f"task{i}" for i in range(35)], num_tokens=16, rank=16)
    assert model.config == ModularPromptConfig(num_layers=18, hidden_size=640)  # the defaults are the released shape
    model.save_pretrained(tmp_path / "bank")
    assert (tmp_path / "bank" / "bank.safetensors").stat().st_size < 1_000_000
    assert model.config.intrinsic_size == 256


def test_calibration_scales_prompts_to_each_layers_hidden_size(backbone):
    model = _model(backbone)
    batch = _batch(backbone)
    ids = model.task_ids(["senti", "senti", "qa"])
    unscaled = model.prompts(ids)
    scale = model.calibrate(batch)
    assert scale.shape == (backbone.num_layers,) and (scale > 0).all()
    hidden = backbone.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    first_block_input = hidden.hidden_states[0]
    mask = batch["attention_mask"].clone()
    mask[:, 0] = 0
    expected = ((first_block_input.pow(2).mean(-1) * mask).sum() / mask.sum()).sqrt()
    assert torch.allclose(scale[0], expected, rtol=1e-4)
    assert torch.allclose(model.prompts(ids), unscaled * scale[None, :, None, None], rtol=1e-4, atol=1e-6)
