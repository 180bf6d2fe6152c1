"""Black-box tuning in-process: the scorer and its layer cache, candidate checks, the optimisers, resuming."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from blackbox_helpers import MAX_LENGTH, examples, tiny_bank

from modprompt.backbone import load_backbone
from modprompt.blackbox.cache import LRUBytes, _Replay
from modprompt.blackbox.objective import InProcessObjective
from modprompt.blackbox.params import Candidate, Space
from modprompt.blackbox.scoring import ParameterError, Scorer
from modprompt.blackbox.tune import TuneConfig, tune
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
                assert a.cache["hits"] == 2 * 2 and a.cache["blocks_skipped"] == 2 * 2 * layer
            base_here = population[0].over(base_here)  # the search moves on with this layer's pick
    assert uncached.cache.stats.hits == 0
    assert not any(isinstance(block, _Replay) for block in model.backbone.blocks)  # real blocks are back


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
    config = TuneConfig("mp2-bb", seed=1, router_evaluations=4, router_initial_points=3, prompt_evaluations=24,
                        popsize=4, dev_every=2)  # fmt: skip
    straight = tune(InProcessObjective(scorer), "eprstmt", train, dev, test, config, tmp_path / "straight.pkl")

    # Two drops: one in stage 1 (the 3rd router call), one in stage 2; each restart resumes from the file.
    dropping = _Dropping(scorer, fail_on={3, 9})
    for _ in range(2):
        with pytest.raises(ConnectionError):
            tune(dropping, "eprstmt", train, dev, test, config, tmp_path / "dropped.pkl")
    resumed = tune(dropping, "eprstmt", train, dev, test, config, tmp_path / "dropped.pkl")

    assert resumed["sessions"] == 3 and straight["sessions"] == 1
    same = ("parameters", "history", "evaluations", "examples_seen", "metric", "best_dev", "trainable_parameters",
            "calls", "tokens")  # calls of a dropped generation are not counted twice
    for key in same:
        assert resumed[key] == straight[key], key
    assert straight["evaluations"] == {"router": 4, "prompt": 24, "dev": 4, "test": 1}  # dev: stage 1 + 3 rounds
    assert straight["examples_seen"] == (4 + 24) * len(train)
    assert straight["trainable_parameters"] == 8 + 2 * 16  # shared router + two layers of n × r
    assert len(straight["parameters"]["router"]) == 8 and set(straight["parameters"]["intrinsic"]) == {"0", "1"}
    assert straight["test"]["examples"] == len(test) and 0 <= straight["metric"] <= 1
    with pytest.raises(ValueError, match="other config"):
        other = TuneConfig("mp2-bb", seed=2)
        tune(InProcessObjective(scorer), "eprstmt", train, dev, test, other, tmp_path / "straight.pkl")


def test_per_layer_router_search(banks, splits):
    scorer = _scorer(_model(banks, "decoder"))
    train, dev, test = splits
    config = TuneConfig("mp2-bb", router="per_layer", router_evaluations=2, router_initial_points=2,
                        prompt_evaluations=0)  # fmt: skip
    result = tune(InProcessObjective(scorer), "eprstmt", train, dev, test, config)
    router = np.array(result["parameters"]["router"])
    assert router.shape == (2, 8) and np.abs(router).max() <= 5
    assert result["trainable_parameters"] == 2 * 8  # no prompt generations: only the router was searched
    assert result["evaluations"] == {"router": 2, "prompt": 0, "dev": 1, "test": 1}


@pytest.mark.parametrize(("method", "layers"), [("bbt", ["0"]), ("bbtv2", ["0", "1"])])
def test_baselines_search_random_projections(banks, splits, method, layers):
    scorer = _scorer(_model(banks, "encoder"))
    train, dev, test = splits
    config = TuneConfig(method, seed=0, prompt_evaluations=16, popsize=4, dim=6)
    result = tune(InProcessObjective(scorer), "eprstmt", train, dev, test, config)
    assert result["trainable_parameters"] == 6 * len(layers)
    assert result["evaluations"]["router"] == 0 and result["evaluations"]["prompt"] == 16
    assert "router" not in result["parameters"] and sorted(result["parameters"]["intrinsic"]) == layers
    assert all(len(v) == 6 and max(map(abs, v)) <= 5 for v in result["parameters"]["intrinsic"].values())
    history = [h["layer"] for h in result["history"]]
    assert history == [int(layers[g % len(layers)]) for g in range(4)]  # layers in turn
    assert result["calls"] == 4 + result["evaluations"]["dev"] + 1  # generations + dev + test, one call each


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
    assert "| bbt | 6 |" in (tmp_path / "blackbox.md").read_text()
    assert (tmp_path / "blackbox.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "work" / "blackbox" / "bbt" / "eprstmt").iterdir()) == [
        "seed0.pkl", "seed1.pkl"]  # fmt: skip

    monkeypatch.setattr(benchmark, "tune_task", lambda *a, **k: pytest.fail("a stored result was run again"))
    assert benchmark.main(argv)["methods"]["bbt"] == bbt
