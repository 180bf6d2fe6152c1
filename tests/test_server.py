"""The model server on a real loopback port: auth, validation, limits, scoring, the layer cache, the client,
and a client killed mid-run that resumes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import numpy as np
import pytest
from blackbox_helpers import MAX_LENGTH, examples, tiny_bank

from modprompt.backbone import load_backbone
from modprompt.blackbox.client import API_KEY_ENV, Client, ServerError
from modprompt.blackbox.objective import InProcessObjective, RemoteObjective
from modprompt.blackbox.params import Candidate, Limits, Space, example_to_dict
from modprompt.blackbox.scoring import Scorer
from modprompt.blackbox.server import ServerThread, create_app, load_api_keys
from modprompt.blackbox.state import load_state
from modprompt.blackbox.tune import TuneConfig, tune
from modprompt.modular.model import ModularPromptModel

KEY = "test-key-0123456789abcdef"
LIMITS = Limits(max_body_bytes=64_000, max_candidates=6, max_examples=20, timeout_s=60)


@pytest.fixture(scope="module")
def served(one_thread, tiny_decoder, data_root, tmp_path_factory):
    """A Gemma-3-like tiny backbone and a random bank behind a real server on a free loopback port."""
    splits = examples(data_root)
    bank = tiny_bank(tiny_decoder, tmp_path_factory.mktemp("bank"), splits[0])
    model = ModularPromptModel.from_pretrained(bank, load_backbone(tiny_decoder))
    scorer = Scorer(model, max_length=MAX_LENGTH, batch_size=8)
    with ServerThread(create_app(scorer, [KEY], LIMITS)) as server:
        yield server.url, scorer, splits


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


def _payload(splits, candidates, **extra):
    return {"examples": [example_to_dict(e) for e in splits[1]], "candidates": candidates, **extra}


def test_health_and_info(served, http):
    assert httpx.get(served[0] + "/v1/health").json() == {"status": "ok"}  # no key needed
    info = http.get("/v1/info").json()
    assert (info["num_layers"], info["num_modules"], info["num_tokens"], info["rank"]) == (2, 8, 4, 4)
    assert info["intrinsic_size"] == 16 and info["hidden_size"] == 32 and info["bound"] == 5.0
    assert info["backbone"]["model_type"] == "gemma3_text" and info["max_length"] == MAX_LENGTH
    assert info["limits"]["max_candidates"] == 6 and info["limits"]["max_body_bytes"] == 64_000


def test_api_key_is_required(served, caplog):
    url = served[0]
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):  # fmt: skip
        for method, path in (("GET", "/v1/info"), ("POST", "/v1/score"), ("POST", "/v1/datasets")):
            response = httpx.request(method, url + path, headers=headers, json={})
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"] == "unauthorized" and KEY not in response.text
    assert httpx.get(url + "/v1/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert KEY not in caplog.text


def test_server_refuses_to_start_without_a_proper_key(monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=API_KEY_ENV):
        load_api_keys()
    monkeypatch.setenv(API_KEY_ENV, "short")
    with pytest.raises(ValueError, match="at least 16 characters"):
        load_api_keys()
    (tmp_path / "keys").write_text(f"# clients\n{KEY}\n\nsecond-key-0123456789\n")
    assert load_api_keys(tmp_path / "keys") == [KEY, "second-key-0123456789"]


BAD_REQUESTS = [
    ({"candidates": [{"router": [0.0] * 7}]}, "candidates.0.router"),
    ({"candidates": [{}, {"intrinsic": {"5": [0.0] * 16}}]}, "candidates.1.intrinsic.5"),
    ({"candidates": [{"intrinsic": {"0": [0.0] * 3}}]}, "candidates.0.intrinsic.0"),
    ({"candidates": [{"intrinsic": {"0": [7.5] * 16}}]}, "candidates.0.intrinsic.0"),
    ({"candidates": [{"intrinsic": {"first": [0.0] * 16}}]}, "candidates.0.intrinsic.first"),
    ({"candidates": [{"router": ["a"] * 8}]}, "candidates.0.router.0"),
    ({"candidates": [{"prompt": [0.0]}]}, "candidates.0.prompt"),
    ({"candidates": []}, "candidates"),
    ({"candidates": [{}] * 7}, "candidates"),
    ({"candidates": [{}], "space": {"kind": "dense"}}, "space.kind"),
    ({"candidates": [{"router": [0.0] * 8}], "space": {"kind": "random", "dim": 4}}, "candidates.0.router"),
    ({"candidates": [{}], "space": {"kind": "random", "dim": 100_000}}, "space.dim"),
    ({"candidates": [{}], "base": {"router": [0.0] * 9}}, "base.router"),
    ({"candidates": [{}], "examples": [{"query": "q", "passage": "p", "options": ["是", "否"], "label": 2}]},
     "examples.0.label"),  # fmt: skip
    ({"candidates": [{}], "examples": [{"query": "q", "options": ["是", "否"]}]}, "examples.0.passage"),
    ({"candidates": [{}], "examples": [{"query": "q", "passage": "p", "options": []}]}, "examples.0.options"),
    ({"candidates": [{}], "examples": [{"query": "q", "passage": "p", "options": ["是"], "path": "/etc/passwd"}]},
     "examples.0.path"),  # fmt: skip
    ({"candidates": [{}], "examples": [{"query": "q", "passage": "p", "options": ["是"]}] * 21}, "examples"),
    ({"candidates": [{}], "dataset": "../../etc/passwd"}, "dataset"),
    ({"candidates": [{}], "dataset": "0" * 32}, "dataset"),  # both a dataset and examples
]


def test_bad_requests_name_the_field_and_change_nothing(served, http):
    splits = served[2]
    good = _payload(splits, [{"router": [1.0] * 8}, {"router": [-1.0] * 8}], with_scores=True)
    before = http.post("/v1/score", json=good).json()
    for changes, field in BAD_REQUESTS:
        payload = {**_payload(splits, []), **changes}
        response = http.post("/v1/score", json=payload)
        assert 400 <= response.status_code < 500, (field, response.text)
        assert response.json()["field"] == field, response.json()
    nan = json.dumps(_payload(splits, [{"router": [float("nan")] * 8}]))  # not valid JSON, but Python writes it
    response = http.post("/v1/score", content=nan, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "candidates.0.router.0"
    response = http.post("/v1/score", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    response = http.post("/v1/score", json={"dataset": "f" * 32, "candidates": [{}]})
    assert response.status_code == 404 and response.json()["field"] == "dataset"
    after = http.post("/v1/score", json=good).json()
    assert after["results"] == before["results"]


def test_oversized_bodies_are_refused(served, http):
    big = _payload(served[2], [{"router": [0.5] * 8}])
    big["examples"][0]["passage"] = "长" * 70_000  # over 64 kB
    response = http.post("/v1/score", json=big)
    assert response.status_code == 413 and response.json()["field"] == "body"

    def streamed():  # no Content-Length: counted as it arrives
        yield b'{"candidates": [{}], "examples": [{"query": "'
        for _ in range(20):
            yield b"x" * 5_000
        yield b'", "passage": "p", "options": ["a"]}]}'

    response = http.post("/v1/score", content=streamed(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert http.get("/v1/health").status_code == 200


def test_population_scoring_matches_in_process(served):
    url, scorer, splits = served
    train = splits[0]
    rng = np.random.default_rng(0)
    population = [Candidate(router=rng.uniform(-5, 5, 8).tolist(), intrinsic={1: rng.uniform(-1, 1, 16).tolist()})
                  for _ in range(10)]  # fmt: skip
    remote = RemoteObjective(Client(url, KEY))
    local = InProcessObjective(Scorer(scorer.model, max_length=MAX_LENGTH, batch_size=8, cache_bytes=0))
    got = remote.evaluate(remote.upload(train), population, with_scores=True)
    expected = local.evaluate(local.upload(train), population, with_scores=True)
    assert got == expected  # the same numbers, bit for bit
    assert remote.usage.calls == 2 and remote.usage.evaluations == 10  # 10 candidates at 6 per call
    assert remote.usage.tokens == local.usage.tokens > 0 and remote.client.stats.tokens == remote.usage.tokens
    assert len({r.loss for r in got}) == 10


def test_layer_cache_over_http_is_exact(served, http):
    url, scorer, splits = served
    uncached = Scorer(scorer.model, max_length=MAX_LENGTH, batch_size=8, cache_bytes=0)
    dataset = http.post("/v1/datasets", json={"examples": [example_to_dict(e) for e in splits[0]]}).json()
    assert dataset["examples"] == 16 and dataset["chunks"] == 2
    assert http.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert http.get("/v1/datasets/" + "e" * 32).status_code == 404
    assert uncached.add_dataset(splits[0])["id"] == dataset["id"]
    rng = np.random.default_rng(1)
    base = Candidate(router=[2.0, -2.0] * 4, intrinsic={0: rng.uniform(-1, 1, 16).tolist()})
    population = [Candidate(intrinsic={1: rng.uniform(-2, 2, 16).tolist()}) for _ in range(5)]
    body = {"dataset": dataset["id"], "base": base.to_dict(), "candidates": [c.to_dict() for c in population],
            "with_scores": True}  # fmt: skip
    reply = http.post("/v1/score", json=body).json()
    assert reply["cache"]["hits"] == 4 * 2 and reply["cache"]["blocks_skipped"] == 4 * 2  # 4 candidates × 2 chunks
    expected = uncached.score(dataset["id"], population, Space.bank(), base, with_scores=True)
    for got, want in zip(reply["results"], expected.results):
        assert got["loss"] == pytest.approx(want.loss, abs=1e-5)
        assert np.allclose(np.concatenate(got["scores"]), np.concatenate(want.scores), atol=1e-5, rtol=0)
    again = http.post("/v1/score", json=body).json()
    assert again["cache"]["hits"] == 5 * 2 and again["results"] == reply["results"]


def test_time_limit_and_busy_model(served):
    url, scorer, splits = served
    payload = _payload(splits, [{}])
    auth = {"Authorization": f"Bearer {KEY}"}
    for timeout, status in ((0.0, 504), (0.5, 503)):
        app = create_app(scorer, [KEY], Limits(timeout_s=timeout))
        with ServerThread(app) as server:
            if status == 503:
                scorer._lock.acquire()  # another request holds the model for longer than this one may wait
            try:
                response = httpx.post(server.url + "/v1/score", json=payload, headers=auth)
            finally:
                if status == 503:
                    scorer._lock.release()
        assert response.status_code == status, response.text
        if status == 503:
            assert response.headers["Retry-After"] == "1"
    assert httpx.post(url + "/v1/score", json=payload, headers=auth).status_code == 200


def test_client_retries_server_errors_and_dropped_connections():
    answers = iter([httpx.Response(503, json={"error": "busy", "message": "busy"}), httpx.ConnectError("dropped"),
                    httpx.Response(500, text="oops"), httpx.Response(200, json={"status": "ok"})])  # fmt: skip

    def handler(request):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client("http://model.test", KEY, backoff=0.001, transport=httpx.MockTransport(handler))
    assert client.health() == {"status": "ok"}
    assert (client.stats.calls, client.stats.attempts, client.stats.retries) == (1, 4, 3)
    assert KEY not in repr(client)

    invalid = httpx.Response(422, json={"message": "bad", "field": "candidates"})
    refusing = Client("http://model.test", KEY, backoff=0.001, transport=httpx.MockTransport(lambda r: invalid))
    with pytest.raises(ServerError) as err:
        refusing.score({})
    assert (err.value.status, err.value.field, refusing.stats.attempts) == (422, "candidates", 1)  # 4xx: no retry

    down = Client("http://127.0.0.1:9", KEY, retries=2, backoff=0.001)  # nothing listens on port 9
    with pytest.raises(ServerError, match="ConnectError"):
        down.health()
    assert down.stats.attempts == 3


def test_forgotten_example_sets_are_uploaded_again(served):
    url, scorer, splits = served
    remote = RemoteObjective(Client(url, KEY))
    dev = remote.upload(splits[1])
    first = remote.evaluate(dev, [Candidate(router=[0.0] * 8)])
    scorer._datasets.clear()  # as after a server restart
    assert remote.evaluate(dev, [Candidate(router=[0.0] * 8)]) == first


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from modprompt.blackbox.client import Client
    from modprompt.blackbox.objective import RemoteObjective
    from modprompt.blackbox.params import example_from_dict
    from modprompt.blackbox.tune import TuneConfig, tune

    job = json.load(open(sys.argv[1]))
    splits = [[example_from_dict(d, i) for i, d in enumerate(part)] for part in job["splits"]]
    objective = RemoteObjective(Client(job["url"], os.environ["MODPROMPT_API_KEY"]))
    tune(objective, "eprstmt", *splits, TuneConfig.from_dict(job["config"]), job["state"])
    """
)


def test_killed_client_resumes_where_it_stopped(served, tmp_path):
    url, _, splits = served
    config = TuneConfig("bbtv2", seed=3, prompt_evaluations=48, popsize=4, dim=8)
    state = tmp_path / "killed.pkl"
    job = {"url": url, "splits": [[example_to_dict(e) for e in s] for s in splits], "config": config.to_dict(),
           "state": str(state)}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job, ensure_ascii=False))
    (tmp_path / "client.py").write_text(CLIENT_SCRIPT)
    env = {**os.environ, API_KEY_ENV: KEY}
    process = subprocess.Popen([sys.executable, str(tmp_path / "client.py"), str(tmp_path / "job.json")], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            saved = load_state(state) if state.exists() else None
            if saved is not None and saved["cma"].generation >= 3:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the client finished before it could be killed"
    killed_at = load_state(state)
    assert killed_at["stage"] == "prompt" and 3 <= killed_at["cma"].generation < 12

    resumed = tune(RemoteObjective(Client(url, KEY)), "eprstmt", *splits, config, state)
    straight = tune(RemoteObjective(Client(url, KEY)), "eprstmt", *splits, config, tmp_path / "straight.pkl")
    assert resumed["sessions"] == 2 and straight["sessions"] == 1
    for key in ("parameters", "history", "evaluations", "examples_seen", "metric", "best_dev"):
        assert resumed[key] == straight[key], key
    assert straight["evaluations"]["prompt"] == 48 and len(straight["history"]) == 12
