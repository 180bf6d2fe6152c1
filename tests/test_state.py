"""Black-box run states: data files (safetensors + JSON) that resume the optimisers exactly and run no code."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from safetensors.numpy import save

from modprompt.blackbox.cmaes import LayerwiseCMA
from modprompt.blackbox.params import Candidate
from modprompt.blackbox.router_bo import RouterSearch
from modprompt.blackbox.state import FORMAT, VERSION, StateError, load_state, save_state


def _loss(x: np.ndarray) -> float:
    return float(np.sum((np.asarray(x) - 0.3) ** 2))


def _run(cma: LayerwiseCMA, search: RouterSearch, generations: int) -> list[np.ndarray]:
    """Some generations of both optimisers (router batches of 1 and 2); what they asked for."""
    asked = []
    for g in range(generations):
        population = cma.ask()
        cma.tell(population, [_loss(x) for x in population])
        routers = search.ask(1 + g % 2)
        search.tell(routers, [_loss(r) for r in routers])
        asked += population + routers
    return asked


def test_a_state_is_data_and_resumes_exactly(tmp_path):
    cma = LayerwiseCMA([0, 1, 2], 16, 0.5, 4, 5.0, 3)
    search = RouterSearch((2, 2), 5.0, 7, 2)
    _run(cma, search, 3)  # past the random start: the router search has fitted its surrogate
    best = Candidate(router=[0.5] * 4, intrinsic={1: [0.25] * 16})
    state = {"cma": cma, "router_search": search, "router_shape": (2, 2), "start": {0: [1.0, 2.0]},
             "best_dev": {"accuracy": 0.5, "loss": float("inf"), "candidate": best}, "x": np.float32(1.5),
             "nan": float("nan"), "history": [{"stage": "router", "evaluations": 4}], "sessions": 1}  # fmt: skip
    path = tmp_path / "run.state"
    save_state(path, state)

    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    document = json.loads(header["__metadata__"]["state"])
    assert (document["format"], document["version"]) == (FORMAT, VERSION)

    loaded = load_state(path)
    assert loaded["router_shape"] == (2, 2) and loaded["start"] == {0: [1.0, 2.0]}
    assert loaded["best_dev"]["candidate"] == best and loaded["best_dev"]["loss"] == math.inf
    assert loaded["x"] == np.float32(1.5) and loaded["x"].dtype == np.float32 and math.isnan(loaded["nan"])
    assert loaded["history"] == state["history"] and loaded["sessions"] == 1
    # The loaded optimisers ask for exactly what the uninterrupted ones ask for, generation after generation.
    resumed = _run(loaded["cma"], loaded["router_search"], 4)
    straight = _run(cma, search, 4)
    assert len(resumed) == len(straight) and all(np.array_equal(a, b) for a, b in zip(resumed, straight))
    assert loaded["router_search"].best[1] == search.best[1]


def test_a_state_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    # A safetensors file starts with its header's length; for one length in 256 its first byte is 0x80, the
    # byte every modern pickle starts with. Such a state was once refused as a pickle (a flaky resume).
    path = tmp_path / "run.state"
    for size in range(600):
        save_state(path, {"note": "x" * size, "values": np.arange(3.0)})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no state size gave a header length whose first byte is 0x80")
    loaded = load_state(path)
    assert loaded["note"] == "x" * size and loaded["values"].tolist() == [0.0, 1.0, 2.0]


def test_an_old_pickle_state_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"cma": Trap()}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(StateError, match="pickle.*delete it"):
        load_state(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "node",
    [
        {"$global": "builtins:eval"},
        {"$global": "os:system"},
        {"$global": "cma.evolution_strategy:os.system"},  # imported into a cma module, defined elsewhere
        {"$object": "subprocess:Popen", "$id": 0, "attrs": []},
        {"$object": "cma.evolution_strategy:np.ndarray", "$id": 0, "attrs": []},
        {"$method": "posix:system:__call__", "self": None, "$id": 0},
        {"$method": "numpy.random.mtrand:RandomState:randn", "self": {"$tuple": []}, "$id": 0},
        {"$skopt": {"args": {"$dict": [["base_estimator", {"$global": "os:system"}]], "$id": 1}, "state": {},
                    "fitted": False}, "$id": 0},  # fmt: skip
        {"$unknown": 1},
    ],
)
def test_a_crafted_state_runs_no_code(tmp_path, node):
    path = tmp_path / "crafted.state"
    document = json.dumps({"format": FORMAT, "version": VERSION, "state": node})
    path.write_bytes(save({}, metadata={"state": document}))
    with pytest.raises(StateError):
        load_state(path)


def test_what_a_state_cannot_hold_is_refused_when_saving(tmp_path):
    path = tmp_path / "s.state"
    for value in ({"f": lambda: 1}, {"o": object()}, {"a": np.array(["text"], dtype=object)}, {"g": len}):
        with pytest.raises(StateError):
            save_state(path, value)
        assert not path.exists()
    for damaged in (b"", b"not a state at all", save({}, metadata={"state": "{"})):
        path.write_bytes(damaged)
        with pytest.raises(StateError):
            load_state(path)
