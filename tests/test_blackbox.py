"""Black-box tuning in-process: the scorer and its layer cache, candidate checks, the optimisers, resuming."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from blackbox_helpers import MAX_LENGTH, examples, tiny_bank

from modprompt.backbone import load_backbone
from modprompt.blackbox.cache import LRUBytes, _Replay
from modprompt.blackbox.config import TuneConfig
from modprompt.blackbox.objective import InProcessObjective, Objective
from modprompt.blackbox.params import Candidate, CandidateResult, Limits, ModelInfo, ScoreReply, Space, routed_mix
from modprompt.blackbox.router_bo import RouterSearch
from modprompt.blackbox.scoring import ParameterError, Scorer, UnknownDataset, clipped_std, length_chunks
from modprompt.blackbox.state import load_state
from modprompt.blackbox.tune import bank_modules, tune
from modprompt.cli import main
from modprompt.data.mrc import MRCExample
from modprompt.evaluate import predict, score
from modprompt.modular.model import ModularPromptModel

KINDS = ["encoder", "decoder", "encoder-decoder"]
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(data_root):
    return examples(data_root)


@pytest.fixture(scope="module")
def banks(request, tmp_path_factory, splits):
    """kind -> (backbone folder, bank folder), built on first use."""
    built = {}

    def get(kind):
        if kind not in built:
            backbone_dir = request.getfixturevalue(f"tiny_{kind.replace('-', '_')}")
            built[kind] = backbone_dir, tiny_bank(backbone_dir, tmp_path_factory.mktemp(f"bank_{kind}"), splits[0])
        return built[kind]

    return get


def _model(banks, kind) -> ModularPromptModel:
    backbone_dir, bank_dir = banks(kind)
    return ModularPromptModel.from_pretrained(bank_dir, load_backbone(backbone_dir))


def _scorer(model, **options) -> Scorer:
    return Scorer(model, max_length=MAX_LENGTH, batch_size=8, **options)


def _close(a, b, tol=1e-5) -> bool:
    return all(
        abs(x.loss - y.loss) <= tol
        and x.accuracy == y.accuracy
        and all(abs(p - q) <= tol for s, t in zip(x.scores, y.scores) for p, q in zip(s, t))
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_layer_cache_gives_the_uncached_outputs(kind, banks, splits):
    model = _model(banks, kind)
    cached, uncached = _scorer(model), _scorer(model, cache_bytes=0)
    dataset = cached.add_dataset(splits[0])["id"]
    assert uncached.add_dataset(splits[0])["id"] == dataset
    chunks = cached.dataset(dataset)["chunks"]
    rng = np.random.default_rng(0)
    size = model.config.intrinsic_size
    base = Candidate(router=rng.uniform(-3, 3, 8).tolist())
    for space, dim in ((Space.bank(), size), (Space.random(7, 10), 10)):
        base_here = base if space.kind == "bank" else Candidate()
        for layer in range(model.config.num_layers):  # one layer-wise round, as BBTv2 searches
            population = [Candidate(intrinsic={layer: rng.uniform(-2, 2, dim).tolist()}) for _ in range(3)]
            a = cached.score(dataset, population, space, base_here, with_scores=True)
            b = uncached.score(dataset, population, space, base_here, with_scores=True)
            assert _close(a.results, b.results)
            assert len({r.loss for r in a.results}) == 3  # the searched layer's prompt matters
            if layer > 0:
                # The first candidate fills the cache at this layer; the other two start there.
                assert a.cache["hits"] == 2 * chunks and a.cache["blocks_skipped"] == 2 * chunks * layer
            base_here = population[0].over(base_here)  # the search moves on with this layer's pick
    assert uncached.cache.stats.hits == 0
    assert not any(isinstance(block, _Replay) for block in model.backbone.blocks)  # real blocks are back


def test_length_chunks_cut_where_padding_costs_more_than_a_forward():
    # 12 short examples and 2 long ones: one chunk pads the short ones to 100, two chunks cost one overhead more
    lengths = [10] * 12 + [100] * 2
    assert length_chunks(lengths, 16, overhead=64) == [(0, 12), (12, 14)]  # 320 + 128 < 1400 + 64
    assert length_chunks(lengths, 16, overhead=2000) == [(0, 14)]  # a forward dearer than the padding
    capped = length_chunks(lengths, 5, overhead=0)  # at most 5 rows, the chunks consecutive, no long row in a short one
    assert all(end - begin <= 5 for begin, end in capped) and [b for b, _ in capped[1:]] == [e for _, e in capped[:-1]]
    assert capped[0][0] == 0 and capped[-1][1] == 14 and (12, 14) in capped
    assert length_chunks([7], 16, overhead=64) == [(0, 1)] and length_chunks([], 16, 64) == []
    with pytest.raises(ValueError, match="sorted"):
        length_chunks([20, 10], 16, 64)


def test_lru_bytes_bounds_memory():
    lru = LRUBytes(max_bytes=250)
    for key in "abc":
        assert lru.put(key, key, 100)
    assert lru.get("a") is None and lru.bytes == 200 and lru.evicted == 1  # the oldest went first
    lru.get("b")  # b is now the most recently used
    lru.put("d", "d", 100)
    assert lru.get("c") is None and lru.get("b") == "b"
    assert not lru.put("huge", "x", 251) and lru.get("huge") is None
    assert LRUBytes(0).put("k", "v", 1) is False


def test_scores_match_evaluate_predictions(banks, splits):
    model = _model(banks, "decoder")
    scorer = _scorer(model)
    test = splits[2]
    candidate = Candidate(router=[1.0, -2.0, 0.5, 3.0, -1.0, 0.0, 2.0, -3.0], intrinsic={1: [0.5] * 16})
    result = scorer.score(scorer.add_dataset(test)["id"], [candidate], with_scores=True).results[0]
    prompts = scorer.prompts(candidate)

    def forward(batch, tasks):
        return model.forward_with_prompts(batch, prompts.expand(len(tasks), -1, -1, -1))

    predictions = predict(forward, scorer.encoder, test, batch_size=5)
    assert result.accuracy == score(predictions)["accuracy"]
    for mine, theirs in zip(result.scores, predictions):
        assert mine == pytest.approx(theirs.scores, abs=1e-5)


@pytest.mark.parametrize(
    ("candidate", "space", "field"),
    [
        (Candidate(router=[0.0] * 7), Space.bank(), "candidates.0.router"),
        (Candidate(router=[[0.0] * 8] * 3), Space.bank(), "candidates.0.router"),
        (Candidate(router=[9.0] * 8), Space.bank(), "candidates.0.router"),
        (Candidate(intrinsic={2: [0.0] * 16}), Space.bank(), "candidates.0.intrinsic.2"),
        (Candidate(intrinsic={0: [0.0] * 15}), Space.bank(), "candidates.0.intrinsic.0"),
        (Candidate(intrinsic={1: [float("nan")] * 16}), Space.bank(), "candidates.0.intrinsic.1"),
        (Candidate(router=[0.0] * 8), Space.random(0, 4), "candidates.0.router"),
        (Candidate(intrinsic={0: [0.0] * 16}), Space.random(0, 4), "candidates.0.intrinsic.0"),
        (Candidate(), Space.random(0, 5000), "space.dim"),
        (Candidate(), Space("other"), "space.kind"),
        (Candidate(), Space.random(0, 4, [1.0]), "space.scale"),  # one per layer: the model has 2
        (Candidate(), Space.random(0, 4, [1.0, 0.0]), "space.scale"),
        (Candidate(), Space.random(0, 4, [1.0, float("inf")]), "space.scale"),
    ],
)
def test_bad_candidates_name_the_field(banks, splits, candidate, space, field):
    scorer = _scorer(_model(banks, "decoder"))
    dataset = scorer.add_dataset(splits[1])["id"]
    with pytest.raises(ParameterError) as err:
        scorer.score(dataset, [candidate], space)
    assert err.value.field == field


def test_unscorable_examples_name_the_example(banks, splits):
    scorer = _scorer(_model(banks, "decoder"))
    long_options = MRCExample("t", "问题", "文章", tuple(["很长的选项" * 30] * 3), label=0)
    with pytest.raises(ParameterError, match="examples.1: .*more than max_length 96") as err:
        scorer.add_dataset([splits[1][0], long_options])
    assert err.value.field == "examples.1"


class _Dropping(InProcessObjective):
    """Fails like a dropped connection on the given score calls (counted over its whole life)."""

    def __init__(self, scorer, fail_on: set[int]) -> None:
        super().__init__(scorer)
        self.fail_on = fail_on
        self.attempts = 0

    def _score(self, *args):
        self.attempts += 1
        if self.attempts in self.fail_on:
            raise ConnectionError("connection dropped")
        return super()._score(*args)


def test_interrupted_mp2_run_resumes_to_the_same_result(banks, splits, tmp_path):
    scorer = _scorer(_model(banks, "decoder"))
    train, dev, test = splits
    config = TuneConfig("mp2-bb", seed=1, router_evaluations=4, router_initial_points=3, router_dev_every=2,
                        prompt_evaluations=24, popsize=4, dev_every=2)  # fmt: skip
    straight = tune(InProcessObjective(scorer), "eprstmt", train, dev, test, config, tmp_path / "straight.state")

    # Two drops: one in stage 1 (the dev check of the 2nd router, after its train call), one in stage 2's
    # first generation; each restart resumes from the file.
    dropping = _Dropping(scorer, fail_on={3, 9})
    for _ in range(2):
        with pytest.raises(ConnectionError):
            tune(dropping, "eprstmt", train, dev, test, config, tmp_path / "dropped.state")
    resumed = tune(dropping, "eprstmt", train, dev, test, config, tmp_path / "dropped.state")

    assert resumed["sessions"] == 3 and straight["sessions"] == 1
    same = ("parameters", "history", "evaluations", "examples_seen", "metric", "best_dev", "trainable_parameters",
            "calls", "tokens", "router", "budget")  # calls of a dropped generation are not counted twice
    for key in same:
        assert resumed[key] == straight[key], key
    # dev: routers 2 and 4, then generations 2, 4 and 6 (3 rounds over 2 layers)
    assert straight["evaluations"] == {"router": 4, "prompt": 24, "dev": 5, "test": 1}
    assert straight["examples_seen"] == (4 + 24) * len(train)
    assert straight["trainable_parameters"] == 2 * 8 + 2 * 16  # a router per layer + two layers of n × r
    assert np.shape(straight["router"]) == (2, 8)
    assert straight["budget"]["evaluations"] == 28 and straight["budget"]["paper"] == 3100
    assert straight["test"]["examples"] == len(test) and 0 <= straight["metric"] <= 1
    with pytest.raises(ValueError, match="other config"):
        other = TuneConfig("mp2-bb", seed=2)
        tune(InProcessObjective(scorer), "eprstmt", train, dev, test, other, tmp_path / "straight.state")


class _Recording(InProcessObjective):
    """Keeps each train-set candidate as the scorer reads it: every layer's intrinsic vector (mix + numbers)."""

    def __init__(self, scorer) -> None:
        super().__init__(scorer)
        self.modules = scorer.model.bank.modules_z.detach().numpy()
        self.train_id: str | None = None
        self.vectors: list[np.ndarray] = []

    def _score(self, part, candidates, space, base, with_scores):
        self.train_id = self.train_id or part  # tune uploads (and first scores) the train set first
        if part == self.train_id and space.kind == "bank":
            for candidate in candidates:
                full = candidate.over(base)
                vectors = np.zeros((len(self.modules), self.modules[0, 0].size))
                if full.router is not None:
                    vectors += routed_mix(self.modules, full.router)
                for layer, values in full.intrinsic.items():
                    vectors[layer] += values
                self.vectors.append(vectors)
        return super()._score(part, candidates, space, base, with_scores)


@pytest.mark.parametrize("bound_on", ["intrinsic", "offset"])
def test_the_bound_bounds_the_searched_intrinsic_vector(banks, splits, bound_on):
    scorer = _scorer(_model(banks, "decoder"))
    train, dev, test = splits
    objective = _Recording(scorer)
    # A wide search (σ 4 at a ±5 bound) so that many numbers are pushed against the bound.
    config = TuneConfig("mp2-bb", router_evaluations=2, router_initial_points=2, prompt_evaluations=16, popsize=4,
                        sigma=4.0, sigma_first=4.0, bound_on=bound_on)  # fmt: skip
    tune(objective, "eprstmt", train, dev, [], config)
    stage2 = np.stack(objective.vectors[2:])  # after the 2 routers: 4 generations of 4
    assert len(stage2) == 16
    if bound_on == "intrinsic":  # MP2: the intrinsic vector itself stays in [-5, 5], and is pressed against it
        assert 4.5 < np.abs(stage2).max() <= 5  # (cma's bound handling approaches a bound without landing on it)
    else:  # before: only the offset from the routed mix was bounded
        assert np.abs(stage2).max() > 5


def test_routed_mix_is_the_scorers(banks):
    scorer = _scorer(_model(banks, "decoder"))
    modules = bank_modules(InProcessObjective(scorer))
    for router in (np.linspace(-3, 3, 8), np.linspace(-4, 4, 16).reshape(2, 8)):
        mix = routed_mix(modules, router)
        routed = scorer.prompts(Candidate(router=router.tolist()))
        stated = scorer.prompts(Candidate(intrinsic={layer: mix[layer].tolist() for layer in range(2)}))
        assert torch.allclose(routed, stated, atol=1e-5)


def test_mp2_preset_steps_0_5_at_the_first_layer_and_0_1_after(banks, splits, tmp_path):
    objective = _Recording(_scorer(_model(banks, "decoder")))
    train, dev, test = splits
    config = TuneConfig.preset("mp2", "mp2-bb", router_evaluations=2, prompt_evaluations=8, popsize=4)
    assert config.step_sizes == (0.5, 0.1) and config.router == "per_layer" and config.router_kappa == 2
    result = tune(objective, "eprstmt", train, dev, [], config, tmp_path / "state.state")
    strategies = load_state(tmp_path / "state.state")["cma"].strategies
    assert {layer: es.sigma0 for layer, es in strategies.items()} == {0: 0.5, 1: 0.1}
    # What was sampled: layer 0's population spreads about 5 times as far from its start as layer 1's.
    start = {int(k): np.array(v) for k, v in load_state(tmp_path / "state.state")["start"].items()}
    first, second = np.stack(objective.vectors[2:6]), np.stack(objective.vectors[6:10])
    spread = [float(np.std(first[:, 0] - start[0])), float(np.std(second[:, 1] - start[1]))]
    assert spread[0] > 2.5 * spread[1]
    assert result["config"]["sigma_first"] is None  # resolved from the method, as sigma is
    assert TuneConfig.preset("mp2", "bbtv2").step_sizes == (0.5, 0.5)  # BBTv2's one σ


def test_mp2_preset_is_mp2s_script():
    config = TuneConfig.preset("mp2", "mp2-bb")
    assert (config.router, config.router_evaluations, config.router_initial_points, config.router_kappa,
            config.router_dev_every) == ("per_layer", 100, 20, 2.0, 10)  # fmt: skip
    assert (config.prompt_evaluations, config.popsize, config.bound, config.bound_on, config.dev_every) == (
        3000, 20, 5.0, "intrinsic", 5)  # fmt: skip
    assert config.generations(18) == 8 * 18  # whole rounds: 2880 of the 3000, as MP2's script spends them
    search = RouterSearch((18, 8), config.bound, 0, config.router_initial_points, config.router_kappa)
    assert search.optimizer.acq_func == "LCB" and search.optimizer.acq_func_kwargs == {"kappa": 2.0}
    assert search.optimizer._n_initial_points == 20
    cpu = TuneConfig.preset("cpu", "mp2-bb")
    assert (cpu.router, cpu.router_evaluations, cpu.prompt_evaluations, cpu.generations(18)) == ("shared", 20, 360, 36)


@pytest.mark.parametrize(("router", "shape"), [("per_layer", (2, 8)), ("shared", (8,))])
def test_bbt_command_searches_the_router_it_is_told(banks, data_root, tmp_path, router, shape):
    backbone_dir, bank_dir = banks("decoder")
    out = tmp_path / "result.json"
    argv = ["bbt", "--bank", str(bank_dir), "--backbone", str(backbone_dir), "--task", "eprstmt", "--method",
            "mp2-bb", "--router", router, "--router-evaluations", "2", "--router-initial-points", "2",
            "--prompt-evaluations", "0", "--data", str(data_root), "--state", str(tmp_path / "s.state"), "--out",
            str(out), "--max-length", str(MAX_LENGTH), "--dev-limit", "4", "--test-limit", "4"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert np.shape(result["router"]) == shape and np.shape(result["parameters"]["router"]) == shape
    assert np.abs(result["router"]).max() <= 5
    assert result["trainable_parameters"] == math.prod(shape)  # no prompt generations: only the router
    # 2 routers: fewer than router_dev_every, so the one of lowest train loss is scored on dev
    assert result["evaluations"] == {"router": 2, "prompt": 0, "dev": 1, "test": 1}
    with pytest.raises(SystemExit):
        main([*argv[:6], "--router", "both"])


class _Synthetic(Objective):
    """A model-free objective read as the scorer reads a bank candidate (each layer's vector is the routed mix
    of ``modules`` plus the candidate's numbers; values beyond the bound refused): the train loss is the
    vectors' squared distance to ``targets[0]``, the dev (and test) loss to ``targets[1]``, and the accuracy
    falls with the loss, so the train-best and the dev-best router can be told apart."""

    def __init__(self, modules: np.ndarray, targets: tuple[float, float]) -> None:
        super().__init__()
        self.modules = modules
        self.targets = targets
        self.sets: list[str] = []
        self.scored: list[tuple[str, Candidate]] = []

    def _fetch_info(self) -> ModelInfo:
        layers, k, n, r = self.modules.shape
        return ModelInfo({"name": "synthetic"}, layers, 8, k, n, r, 5.0, 64, 32)

    def _upload(self, examples) -> str:
        self.sets.append(["train", "dev", "test"][len(self.sets)])
        return self.sets[-1]

    def _spread(self, part):
        raise AssertionError("mp2-bb never asks for the hidden states' spread")

    def _score(self, part, candidates, space, base, with_scores) -> ScoreReply:
        results = []
        for candidate in candidates:
            full = candidate.over(base)
            numbers = [full.router or [], *full.intrinsic.values()]
            if max((abs(v) for v in np.ravel(np.concatenate([np.ravel(x) for x in numbers]))), default=0) > 5:
                raise ParameterError("candidates", "values must lie in [-5, 5]")
            vectors = routed_mix(self.modules, full.router) if full.router is not None else 0 * self.modules[:, 0]
            vectors = np.array(vectors, dtype=float).reshape(len(self.modules), -1)
            for layer, values in full.intrinsic.items():
                vectors[layer] += values
            loss = float(np.mean((vectors - self.targets[part != "train"]) ** 2))
            results.append(CandidateResult(loss, 1 / (1 + loss)))
            self.scored.append((part, full))
        return ScoreReply(results, 4, 4, 4 * len(candidates))


def test_stage_1_keeps_the_dev_best_router_not_the_train_best(data_root, splits):
    train, dev, test = splits
    modules = np.random.default_rng(0).normal(size=(3, 8, 2, 2)).astype(np.float32)
    objective = _Synthetic(modules, targets=(1.5, -1.5))  # train and dev want opposite mixes
    config = TuneConfig("mp2-bb", seed=0, router_evaluations=12, router_initial_points=6, router_dev_every=3,
                        prompt_evaluations=0)  # fmt: skip
    result = tune(objective, "synthetic", train, dev, test, config, modules=modules)
    routers = [c.router for part, c in objective.scored if part == "train"]
    train_loss = [float(np.mean((routed_mix(modules, r) - 1.5) ** 2)) for r in routers]
    dev_loss = {i: float(np.mean((routed_mix(modules, r) + 1.5) ** 2)) for i, r in enumerate(routers, 1) if i % 3 == 0}
    dev_checked = [c.router for part, c in objective.scored if part == "dev"]
    assert dev_checked == [routers[i - 1] for i in (3, 6, 9, 12)]  # MP2: the router of every 3rd evaluation
    dev_best, train_best = min(dev_loss, key=dev_loss.get), int(np.argmin(train_loss)) + 1
    assert dev_best != train_best  # the case this test is about
    assert result["router"] == routers[dev_best - 1] and result["best_dev"]["at"] == f"router {dev_best}"
    assert result["parameters"]["router"] == routers[dev_best - 1]  # and the one tested


def test_stage_2_starts_at_the_routed_mix_and_checks_a_local_copy(data_root, splits):
    train, dev, test = splits
    modules = np.random.default_rng(1).normal(size=(3, 8, 2, 2)).astype(np.float32)
    config = TuneConfig("mp2-bb", router="shared", router_evaluations=4, router_initial_points=4,
                        router_dev_every=2, prompt_evaluations=12, popsize=2)  # fmt: skip
    objective = _Synthetic(modules, targets=(0.5, 0.5))
    result = tune(objective, "synthetic", train, dev, test, config, modules=modules)
    assert result["evaluations"]["dev"] == 2 + 1 + 2  # routers 2 and 4, the copy's check, generations 5 and 6
    first = [c for part, c in objective.scored if part == "train"][4]  # stage 2's first candidate
    mix = routed_mix(modules, result["router"])
    assert first.router is None and all(np.allclose(first.intrinsic[l], mix[l]) for l in (1, 2))  # others: the mix
    assert result["trainable_parameters"] == 8 + 3 * 4

    with pytest.raises(ValueError, match="not the bank the server serves"):
        tune(_Synthetic(modules, (0.5, 0.5)), "synthetic", train, dev, test, config, modules=modules + 1)
    with pytest.raises(ValueError, match="--bank-copy"):  # a served model does not send its modules
        tune(_Synthetic(modules, (0.5, 0.5)), "synthetic", train, dev, test, config)
    offset = TuneConfig(**{**config.to_dict(), "bound_on": "offset"})
    assert tune(_Synthetic(modules, (0.5, 0.5)), "synthetic", train, dev, test, offset)["evaluations"]["prompt"] == 12


def test_one_bar_counts_every_train_evaluation_with_the_loss_and_dev_score(splits, capsys):
    train, dev, test = splits
    modules = np.random.default_rng(1).normal(size=(3, 8, 2, 2)).astype(np.float32)
    config = TuneConfig("mp2-bb", router="shared", router_evaluations=4, router_initial_points=4,
                        router_dev_every=2, prompt_evaluations=12, popsize=2)  # fmt: skip
    tune(_Synthetic(modules, (0.5, 0.5)), "synthetic", train, dev, test, config, modules=modules, progress=True)
    bar = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert bar.startswith("mp2-bb: 100%") and "16/16" in bar and "loss=" in bar and "dev=" in bar  # 4 routers + 6 × 2
    tune(_Synthetic(modules, (0.5, 0.5)), "synthetic", train, dev, test, config, modules=modules)
    assert "mp2-bb" not in capsys.readouterr().err  # stderr is no terminal here: no bar


def test_serve_has_a_flag_for_every_request_limit():
    from modprompt.blackbox.cli import limits_arg
    from modprompt.cli import build_parser

    args = build_parser().parse_args(["serve", "--bank", "b", "--max-candidates", "3", "--timeout-s", "1.5"])
    assert limits_arg(args) == Limits(max_candidates=3, timeout_s=1.5)
    every = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(Limits)]
    args = build_parser().parse_args(["serve", "--bank", "b"] + [x for flag in every for x in (flag, "7")])
    assert limits_arg(args) == Limits(*[7] * len(every))


def test_every_bbt_flag_is_generated_from_its_field_and_sets_it(capsys):
    from modprompt.blackbox.cli import _FLAGS
    from modprompt.cli import build_parser
    from modprompt.config_flags import dataclass_flag_values

    assert set(_FLAGS) == {f.name for f in dataclasses.fields(TuneConfig)} - {"method"}
    given = {"seed": 2, "k_per_label": 8, "router": "shared", "router_evaluations": 7, "router_initial_points": 3,
             "router_kappa": 1.5, "router_dev_every": 4, "router_batch": 2, "prompt_evaluations": 40, "popsize": 4,
             "sigma": 0.2, "sigma_first": 0.3, "bound": 2.0, "bound_on": "offset", "dim": 6, "dev_every": 3,
             "test_limit": 20, "dev_limit": 10}  # fmt: skip
    assert set(given) == set(_FLAGS)
    argv = ["bbt", "--bank", "b", "--task", "eprstmt", "--method", "mp2-bb", "--preset", "cpu"]
    args = build_parser().parse_args(argv + [a for n, v in given.items() for a in ("--" + n.replace("_", "-"), str(v))])
    config = TuneConfig.preset(args.preset, args.method, **dataclass_flag_values(args, _FLAGS))
    assert {name: getattr(config, name) for name in given} == given
    args = build_parser().parse_args(argv)  # no flag: the preset's values
    cpu = TuneConfig.preset("cpu", "mp2-bb")
    assert TuneConfig.preset(args.preset, args.method, **dataclass_flag_values(args, _FLAGS)) == cpu
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bbt", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--popsize POPSIZE CMA-ES population (MP2: 20); default 20; --preset cpu: 10" in shown


def test_configs_saved_before_mp2_fidelity_read_as_they_ran(tmp_path):
    stored = json.loads((REPO / "benchmarks/results/blackbox/mp2-bb/eprstmt/seed0.json").read_text())["config"]
    old = TuneConfig.from_dict(stored)
    assert (old.router_kappa, old.router_dev_every, old.bound_on, old.step_sizes) == (None, None, "offset",
                                                                                      (0.1, 0.1))  # fmt: skip
    assert TuneConfig.from_dict(TuneConfig("bbt").to_dict()) == TuneConfig("bbt")
    search = RouterSearch((8,), 5.0, 0, old.router_initial_points, old.router_kappa)
    assert search.optimizer.acq_func == "gp_hedge"  # scikit-optimize's default, as then


class _Spaces(InProcessObjective):
    """Keeps the space of every score call."""

    def __init__(self, scorer) -> None:
        super().__init__(scorer)
        self.spaces: list[Space] = []

    def _score(self, part, candidates, space, base, with_scores):
        self.spaces.append(space)
        return super()._score(part, candidates, space, base, with_scores)


@pytest.mark.parametrize(("method", "layers"), [("bbt", ["0"]), ("bbtv2", ["0", "1"])])
def test_baselines_search_random_projections(banks, splits, method, layers):
    scorer = _scorer(_model(banks, "encoder"))
    train, dev, test = splits
    config = TuneConfig(method, seed=0, prompt_evaluations=16, popsize=4, dim=6, sigma=0.5, sigma_first=0.25)
    objective = _Spaces(scorer)
    result = tune(objective, "eprstmt", train, dev, test, config)
    assert result["trainable_parameters"] == 6 * len(layers)
    assert result["evaluations"]["router"] == 0 and result["evaluations"]["prompt"] == 16
    assert "router" not in result["parameters"] and sorted(result["parameters"]["intrinsic"]) == layers
    assert all(len(v) == 6 and max(map(abs, v)) <= 5 for v in result["parameters"]["intrinsic"].values())
    history = [h["layer"] for h in result["history"]]
    assert history == [int(layers[g % len(layers)]) for g in range(4)]  # layers in turn
    # the spread once, then generations + dev + test, one call each
    assert result["calls"] == 1 + 4 + result["evaluations"]["dev"] + 1
    # BBTv2's normal projection: the train inputs' spread over each layer's step size (0.25 first, then 0.5)
    spread = scorer.spread(scorer.dataset_id(train))["spread"]
    assert result["spread"] == spread
    expected = Space.random(0, 6, [spread[0] / 0.25, spread[1] / 0.5])
    assert objective.spaces and all(space == expected for space in objective.spaces)


def test_clipped_std_is_bbtv2s_outlier_clipping():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 2.0, 50_000)
    values[:40] = 3000.0  # a few huge activations, as in a residual stream's outlying dimensions
    x = values.copy()  # deepbbt.py's loop, in numpy
    mu, sd = x.mean(), x.std()
    for _ in range(5):
        x = np.clip(x, mu - 3 * sd, mu + 3 * sd)
        mu, sd = x.mean(), x.std()
    assert clipped_std(torch.tensor(values)) == pytest.approx(sd, rel=1e-12)
    assert 1.9 < sd < 2.1 and np.sqrt((values**2).mean()) > 40 * sd  # the RMS is ruled by the outliers


@pytest.mark.parametrize("kind", KINDS)
def test_spread_is_the_clipped_std_of_every_blocks_input(kind, banks, splits):
    model = _model(banks, kind)
    scorer = _scorer(model)
    train = splits[0]
    reply = scorer.spread(scorer.add_dataset(train)["id"])
    # The same states another way: the whole set in one padded batch, each block's input at the real tokens.
    batch = scorer.encoder.collate(scorer.encoder.encode_all(train))
    mask = batch["attention_mask"].bool()
    states: list[torch.Tensor] = []
    hooks = [block.register_forward_pre_hook(
        lambda module, args, kwargs: states.append((args[0] if args else kwargs["hidden_states"])[mask].flatten()),
        with_kwargs=True) for block in model.backbone.blocks]  # fmt: skip
    try:
        with torch.no_grad():
            model.backbone(batch["input_ids"], batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    assert len(reply["spread"]) == model.config.num_layers == len(states)
    assert reply["tokens"] == int(mask.sum())
    for got, values in zip(reply["spread"], states):
        assert got == pytest.approx(clipped_std(values), rel=1e-4)
    with pytest.raises(UnknownDataset):
        scorer.spread("0" * 32)


def test_a_random_spaces_scale_sets_its_projections_size(banks):
    scorer = _scorer(_model(banks, "decoder"))
    z = torch.randn(6, generator=torch.Generator().manual_seed(0)).tolist()
    candidate = Candidate(intrinsic={0: z, 1: z})
    rms = scorer.model.bank.layer_scale.tolist()
    plain = scorer.prompts(candidate, Space.random(3, 6))
    scaled = scorer.prompts(candidate, Space.random(3, 6, [2.0, 0.5]))
    for layer, scale in enumerate([2.0, 0.5]):  # the same draw, multiplied: scale in place of the layer's RMS
        assert torch.allclose(scaled[0, layer], plain[0, layer] * scale / rms[layer], rtol=1e-5, atol=1e-6)
    big = torch.randn(512, generator=torch.Generator().manual_seed(1)).tolist()
    prompt = scorer.prompts(Candidate(intrinsic={1: big}), Space.random(3, 512, [1.0, 7.0]))[0, 1]
    assert 6.0 < prompt.std().item() < 8.0  # a unit-variance z gives entries of std scale[l]


def test_blackbox_benchmark_stores_resumes_and_aggregates(banks, data_root, tmp_path, monkeypatch):
    backbone_dir, bank_dir = banks("encoder")
    monkeypatch.syspath_prepend(REPO / "benchmarks")  # as when run as a script: it imports result_grid beside it
    spec = importlib.util.spec_from_file_location("blackbox_benchmark", REPO / "benchmarks" / "blackbox.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    argv = ["--bank", str(bank_dir), "--backbone", str(backbone_dir), "--data", str(data_root),
            "--results", str(tmp_path), "--work", str(tmp_path / "work"), "--methods", "bbt", "--tasks", "eprstmt",
            "--seeds", "0", "1", "--prompt-evaluations", "8", "--popsize", "4", "--dim", "6", "--test-limit", "12",
            "--dev-limit", "8", "--max-length", str(MAX_LENGTH)]  # fmt: skip
    summary = benchmark.main(argv)
    bbt = summary["methods"]["bbt"]
    assert bbt["trainable_parameters"] == 6 and bbt["runs"] == 2 and bbt["tasks"]["eprstmt"]["n"] == 2
    assert summary["settings"]["prompt_evaluations"] == 8 and summary["server"] == "in-process"
    table = (tmp_path / "blackbox.md").read_text()
    assert "| bbt | 6 |" in table and "| 8 | 8,000 | 0.1% |" in table  # 8 evaluations of BBT's 8,000
    assert (bbt["evaluations_per_run"], bbt["paper_budget"], bbt["budget_share"]) == (8, 8000, 0.001)
    assert (tmp_path / "blackbox.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "work" / "blackbox" / "bbt" / "eprstmt").iterdir()) == [
        "seed0.state", "seed1.state"]  # fmt: skip

    assert bbt["projection"] == "spread" and "Random projections" in table and "before the spread" not in table

    monkeypatch.setattr(benchmark, "tune_task", lambda *a, **k: pytest.fail("a stored result was run again"))
    assert benchmark.main(argv)["methods"]["bbt"] == bbt
    # A cell stored before the spread was measured is said to be one
    cell = tmp_path / "blackbox" / "bbt" / "eprstmt" / "seed1.json"
    cell.write_text(json.dumps({k: v for k, v in json.loads(cell.read_text()).items() if k != "spread"}))
    assert benchmark.main(argv)["methods"]["bbt"]["projection"] == "rms/spread"
    assert "before the spread was measured**, bbt (some of its runs), sized" in (tmp_path / "blackbox.md").read_text()


def test_the_speed_benchmark_replays_a_run_and_checks_every_candidate_and_loss(banks, data_root, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    backbone_dir, bank_dir = banks("decoder")
    monkeypatch.syspath_prepend(REPO / "benchmarks")
    spec = importlib.util.spec_from_file_location("blackbox_speed", REPO / "benchmarks" / "blackbox_speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)

    def run(name: str, *extra: str) -> dict:
        out = tmp_path / f"{name}.json"
        speed.main(["--measure", "--out", str(out), "--bank", str(bank_dir), "--backbone", str(backbone_dir),
                    "--data", str(data_root), "--task",
                    "eprstmt", "--router-evaluations", "6", "--prompt-evaluations", "8", "--popsize", "4",
                    "--test-limit", "12", "--dev-limit", "8", "--max-length", str(MAX_LENGTH), "--threads", "1",
                    *extra])  # fmt: skip
        return json.loads(out.read_text())

    calls = tmp_path / "calls.jsonl"
    first = run("first", "--record", str(calls))
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [r["set"] for r in recorded].count("test") == 1 and len(recorded) == first["calls"]
    assert set(first["timing"]["seconds"]) == {"router", "prompt", "dev", "test", "other"}
    again = run("again", "--replay", str(calls))
    assert again["replay"]["calls"] == again["replay"]["recorded_calls"] == len(recorded)
    assert again["replay"]["candidates_differ"] == 0 and again["replay"]["max_loss_difference"] < 1e-6
    assert speed.compare(first, again, 1e-5)["exact"]

    # A record whose losses are not what this code computes: the replay follows the record and says so.
    recorded[-2]["results"][0]["loss"] += 0.5  # the last dev check before the test
    calls.write_text("".join(json.dumps(r) + "\n" for r in recorded))
    tampered = run("tampered", "--replay", str(calls))
    assert tampered["replay"]["max_loss_difference"] == pytest.approx(0.5, abs=1e-6)
    assert tampered["replay"]["max_loss_difference_by_phase"]["dev"] == pytest.approx(0.5, abs=1e-6)
    assert not speed.compare(first, tampered, 1e-5)["same"]["losses"]
