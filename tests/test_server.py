"""The model server on a real loopback port: auth, validation, limits, scoring, the layer cache, the client,
a client killed mid-run that resumes, and hostile or careless clients (bad requests of every kind, idle
and stalled sockets, floods of values, clients that leave or retry, keys sent where they do not belong)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from blackbox_helpers import MAX_LENGTH, examples, tiny_bank

from modprompt.backbone import load_backbone
from modprompt.blackbox.client import API_KEY_ENV, Client, ServerError
from modprompt.blackbox.objective import InProcessObjective, RemoteObjective
from modprompt.blackbox.params import Candidate, Limits, Space, example_from_dict, example_to_dict
from modprompt.blackbox.scoring import Scorer
from modprompt.blackbox.server import ServerConfig, ServerThread, create_app, load_api_keys
from modprompt.blackbox.state import load_state
from modprompt.blackbox.config import TuneConfig
from modprompt.blackbox.tune import tune
from modprompt.modular.model import ModularPromptModel

KEY = "test-key-0123456789abcdef"
LIMITS = Limits(max_body_bytes=64_000, max_candidates=6, max_examples=20, timeout_s=60)


@pytest.fixture(scope="module")
def bank_dir(tiny_decoder, data_root, tmp_path_factory):
    """A random bank over the Gemma-3-like tiny backbone."""
    return tiny_bank(tiny_decoder, tmp_path_factory.mktemp("bank"), examples(data_root)[0])


@pytest.fixture(scope="module")
def served(one_thread, tiny_decoder, bank_dir, data_root):
    """The tiny backbone and the random bank behind a real server on a free loopback port."""
    splits = examples(data_root)
    model = ModularPromptModel.from_pretrained(bank_dir, load_backbone(tiny_decoder))
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


def _raw(data) -> bytes:
    """JSON as Python writes it: NaN and Infinity included, lone surrogates escaped."""
    return json.dumps(data).encode()


def _stream(size: int):
    yield b'{"candidates": [{}], "examples": [{"query": "'
    for _ in range(size // 5_000):
        yield b"x" * 5_000
    yield b'", "passage": "p", "options": ["a"]}]}'


OK_EXAMPLE = {"query": "q", "passage": "p", "options": ["是", "否"]}
HEX = "0123456789abcdef" * 2

# (what, method, path, headers (None: the key and JSON), body (dict: changes to a valid request; bytes: sent
#  as they are; a function: a generator of the body, streamed), status, field)
BAD = [
    ("no key", "POST", "/v1/score", {}, {}, 401, "authorization"),
    ("wrong key", "POST", "/v1/score", {"Authorization": "Bearer wrong-key-0123456789"}, {}, 401, "authorization"),
    ("basic scheme", "POST", "/v1/score", {"Authorization": f"Basic {KEY}"}, {}, 401, "authorization"),
    ("key plus a suffix", "POST", "/v1/score", {"Authorization": f"Bearer {KEY}x"}, {}, 401, "authorization"),
    ("key in the query string", "POST", f"/v1/score?api_key={KEY}", {}, {}, 401, "authorization"),
    ("key in another header", "GET", "/v1/info", {"X-API-Key": KEY}, None, 401, "authorization"),
    ("strings for numbers", "POST", "/v1/score", None, {"candidates": [{"router": ["a"] * 8}]}, 422,
     "candidates.0.router.0"),
    ("booleans for numbers", "POST", "/v1/score", None, {"candidates": [{"router": [True] * 8}]}, 422,
     "candidates.0.router.0"),
    ("candidates an object", "POST", "/v1/score", None, {"candidates": {"0": {}}}, 422, "candidates"),
    ("a string for a flag", "POST", "/v1/score", None, {"candidates": [{}], "with_scores": "yes"}, 422,
     "with_scores"),
    ("a float label", "POST", "/v1/score", None, {"candidates": [{}], "examples": [{**OK_EXAMPLE, "label": 1.0}]},
     422, "examples.0.label"),
    ("a number for text", "POST", "/v1/score", None, {"candidates": [{}], "examples": [{**OK_EXAMPLE, "query": 5}]},
     422, "examples.0.query"),
    ("negative seed", "POST", "/v1/score", None, {"candidates": [{}], "space": {"kind": "random", "seed": -1,
                                                                                "dim": 4}}, 422, "space.seed"),
    ("a word for a layer", "POST", "/v1/score", None, {"candidates": [{"intrinsic": {"first": [0.0] * 16}}]}, 422,
     "candidates.0.intrinsic.first"),
    ("NaN", "POST", "/v1/score", None, _raw({**{"candidates": [{"router": [float("nan")] * 8}]}}), 422,
     "candidates.0.router.0"),
    ("Infinity", "POST", "/v1/score", None, _raw({"candidates": [{"intrinsic": {"0": [float("inf")] * 16}}]}), 422,
     "candidates.0.intrinsic.0.0"),
    ("1e999", "POST", "/v1/score", None, b'{"dataset": "' + HEX.encode() + b'", "candidates": [{"router": [1e999,'
     b' 0, 0, 0, 0, 0, 0, 0]}]}', 422, "candidates.0.router.0"),
    ("over the bound", "POST", "/v1/score", None, {"candidates": [{"intrinsic": {"0": [7.5] * 16}}]}, 422,
     "candidates.0.intrinsic.0"),
    ("1e308", "POST", "/v1/score", None, {"candidates": [{"router": [1e308] * 8}]}, 422, "candidates.0.router"),
    ("an integer of 5000 digits", "POST", "/v1/score", None,
     b'{"candidates": [{"router": [' + b"9" * 5000 + b"]}]}", 422, "body"),
    ("an integer of 400 digits", "POST", "/v1/score", None, {"candidates": [{"router": [10**400] + [0] * 7}]}, 422,
     "candidates.0.router.0"),
    ("a huge random dimension", "POST", "/v1/score", None, {"candidates": [{}], "space": {"kind": "random",
                                                                                         "dim": 100_000}}, 422,
     "space.dim"),
    ("a seed past 2**32", "POST", "/v1/score", None, {"candidates": [{}], "space": {"kind": "random", "seed": 2**40,
                                                                                   "dim": 4}}, 422, "space.seed"),
    ("7 router logits", "POST", "/v1/score", None, {"candidates": [{"router": [0.0] * 7}]}, 422,
     "candidates.0.router"),
    ("3 per-layer routers", "POST", "/v1/score", None, {"candidates": [{"router": [[0.0] * 8] * 3}]}, 422,
     "candidates.0.router"),
    ("a short vector", "POST", "/v1/score", None, {"candidates": [{"intrinsic": {"0": [0.0] * 3}}]}, 422,
     "candidates.0.intrinsic.0"),
    ("no such layer", "POST", "/v1/score", None, {"candidates": [{}, {"intrinsic": {"5": [0.0] * 16}}]}, 422,
     "candidates.1.intrinsic.5"),
    ("a nested vector", "POST", "/v1/score", None, {"candidates": [{"intrinsic": {"0": [[0.0] * 16]}}]}, 422,
     "candidates.0.intrinsic.0.0"),
    ("a 9-logit base", "POST", "/v1/score", None, {"candidates": [{}], "base": {"router": [0.0] * 9}}, 422,
     "base.router"),
    ("a router in the random space", "POST", "/v1/score", None,
     {"candidates": [{"router": [0.0] * 8}], "space": {"kind": "random", "dim": 4}}, 422, "candidates.0.router"),
    ("7 candidates", "POST", "/v1/score", None, {"candidates": [{}] * 7}, 422, "candidates"),
    ("21 examples", "POST", "/v1/score", None, {"candidates": [{}], "examples": [OK_EXAMPLE] * 21}, 422, "examples"),
    ("257 options", "POST", "/v1/score", None, {"candidates": [{}], "examples": [{**OK_EXAMPLE,
                                                                                 "options": ["a"] * 257}]}, 422,
     "examples.0.options"),
    ("a passage of 20001 characters", "POST", "/v1/score", None,
     {"candidates": [{}], "examples": [{**OK_EXAMPLE, "passage": "x" * 20_001}]}, 422, "examples.0.passage"),
    ("a declared body over the limit", "POST", "/v1/score", None, {"examples": [{**OK_EXAMPLE, "passage": "长" *
                                                                                 30_000}]}, 413, "body"),
    ("a streamed body over the limit", "POST", "/v1/score", None, lambda: _stream(100_000), 413, "body"),
    ("30000 numbers in 60 kB", "POST", "/v1/score", None, b'{"candidates": [{"router": [' + b",".join([b"0"] * 30_000)
     + b"]}]}", 413, "body"),
    ("nested 5000 deep", "POST", "/v1/score", None, b"[" * 5000 + b"]" * 5000, 422, "body"),
    ("candidates nested in lists", "POST", "/v1/score", None, {"candidates": [[[{}]]]}, 422, "candidates.0"),
    ("a byte that is not UTF-8", "POST", "/v1/score", None, b'{"candidates": [{}], "dataset": "\xff"}', 422, "body"),
    ("UTF-16", "POST", "/v1/score", None, json.dumps({"candidates": [{}]}).encode("utf-16"), 422, "body"),
    ("an encoded surrogate", "POST", "/v1/score", None, b'{"candidates": [{}], "examples": [{"query": "\xed\xa0\x80", '
     b'"passage": "p", "options": ["a"]}]}', 422, "body"),
    ("an overlong encoding", "POST", "/v1/score", None, b'{"candidates": [{}], "dataset": "\xc0\xaf"}', 422, "body"),
    ("text/plain", "POST", "/v1/score", {"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
     {"candidates": [{}]}, 415, "content-type"),
    ("latin-1", "POST", "/v1/score", {"Authorization": f"Bearer {KEY}",
                                      "Content-Type": "application/json; charset=latin-1"}, {}, 415, "content-type"),
    ("a lone surrogate in a query", "POST", "/v1/score", None,
     {"candidates": [{}], "examples": [{**OK_EXAMPLE, "query": "a\ud800b"}]}, 422, "examples.0.query"),
    ("a lone surrogate in an option", "POST", "/v1/score", None,
     {"candidates": [{}], "examples": [{**OK_EXAMPLE, "options": ["是", "\udfff"]}]}, 422, "examples.0.options.1"),
    ("a lone surrogate in an upload", "POST", "/v1/datasets", None, {"examples": [{**OK_EXAMPLE, "passage": "\ud83d"}]},
     422, "examples.0.passage"),
    ("a lone surrogate in a key", "POST", "/v1/score", None,
     {"candidates": [{}], "examples": [{**OK_EXAMPLE, "\ud800": 1}]}, 422, "examples.0"),
    ("a lone surrogate in an id", "POST", "/v1/score", None, {"candidates": [{}], "examples": None,
                                                              "dataset": "\ud800" * 32}, 422, "dataset"),
    ("an unknown top-level field", "POST", "/v1/score", None, {"candidates": [{}], "prompt": "x"}, 422, "prompt"),
    ("an unknown candidate field", "POST", "/v1/score", None, {"candidates": [{"prompt": [0.0]}]}, 422,
     "candidates.0.prompt"),
    ("an unknown space", "POST", "/v1/score", None, {"candidates": [{}], "space": {"kind": "dense"}}, 422,
     "space.kind"),
    ("a path as an example field", "POST", "/v1/score", None,
     {"candidates": [{}], "examples": [{**OK_EXAMPLE, "path": "/etc/passwd"}]}, 422, "examples.0.path"),
    ("a path as the dataset", "POST", "/v1/score", None, {"candidates": [{}], "examples": None,
                                                          "dataset": "../../etc/passwd"}, 422, "dataset"),
    ("a path for the examples", "POST", "/v1/score", None, {"candidates": [{}], "examples": "/data/train.jsonl"}, 422,
     "examples"),
    ("a path for a bank", "POST", "/v1/score", None, {"candidates": [{}], "bank": "/etc/passwd"}, 422, "bank"),
    ("a path as a dataset id", "GET", "/v1/datasets/etc-passwd", None, None, 422, "dataset"),
    ("GET a POST endpoint", "GET", "/v1/score", None, None, 405, "method"),
    ("PUT", "PUT", "/v1/datasets", None, {}, 405, "method"),
    ("DELETE a set", "DELETE", "/v1/datasets/" + HEX, None, None, 405, "method"),
    ("POST health", "POST", "/v1/health", None, {}, 405, "method"),
    ("no such path", "GET", "/v1/nothing", None, None, 404, "path"),
    ("not JSON", "POST", "/v1/score", None, b"{not json", 422, "body"),
    ("an empty body", "POST", "/v1/score", None, b"", 422, "body"),
    ("a list, not an object", "POST", "/v1/score", None, b"[]", 422, "body"),
    ("trailing bytes", "POST", "/v1/score", None, b'{"candidates": [{}]} x', 422, "body"),
    ("both a dataset and examples", "POST", "/v1/score", None, {"candidates": [{}], "dataset": HEX}, 422, "dataset"),
    ("neither", "POST", "/v1/score", None, {"candidates": [{}], "examples": None}, 422, "dataset"),
    ("an unknown dataset", "POST", "/v1/score", None, {"candidates": [{}], "examples": None, "dataset": HEX}, 404,
     "dataset"),
    ("a scale per layer short of one", "POST", "/v1/score", None,
     {"candidates": [{}], "space": {"kind": "random", "seed": 0, "dim": 4, "scale": [1.0]}}, 422, "space.scale"),
    ("a scale of zero", "POST", "/v1/score", None,
     {"candidates": [{}], "space": {"kind": "random", "seed": 0, "dim": 4, "scale": [1.0, 0.0]}}, 422, "space.scale"),
    ("a string for a scale", "POST", "/v1/score", None,
     {"candidates": [{}], "space": {"kind": "random", "seed": 0, "dim": 4, "scale": ["1", 1.0]}}, 422,
     "space.scale.0"),
    ("the spread of an unknown dataset", "POST", "/v1/spread", None, _raw({"dataset": HEX}), 404, "dataset"),
    ("the spread of no dataset", "POST", "/v1/spread", None, _raw({}), 422, "dataset"),
    ("the spread of a malformed id", "POST", "/v1/spread", None, _raw({"dataset": "../x"}), 422, "dataset"),
    ("the spread with an extra member", "POST", "/v1/spread", None, _raw({"dataset": HEX, "layers": [0]}), 422,
     "layers"),
]  # fmt: skip


def _send(url: str, splits, entry, timeout: float = 60) -> httpx.Response:
    """Send one row of BAD (a dict body is laid over a valid request, so one thing is wrong)."""
    _, method, path, headers, body, _, _ = entry
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"} if headers is None else headers
    if isinstance(body, dict):
        valid = _payload(splits, [{"router": [0.5] * 8}])
        if path == "/v1/datasets":
            valid = {"examples": valid["examples"]}
        payload = {**valid, **body}
        content = json.dumps({k: v for k, v in payload.items() if v is not None}).encode()
    else:
        content = body() if callable(body) else body
    return httpx.request(method, url + path, headers=headers, content=content, timeout=timeout)


def _good(splits) -> dict:
    return _payload(splits, [{"router": [1.0] * 8}, {"router": [-1.0] * 8}], with_scores=True)


def test_bad_requests_name_the_field_and_change_nothing(served, http):
    url, _, splits = served
    assert len({entry[0] for entry in BAD}) == len(BAD) >= 30
    good = _good(splits)
    before = http.post("/v1/score", json=good).json()["results"]
    for i, entry in enumerate(BAD):
        response = _send(url, splits, entry)
        what, status, field = entry[0], entry[5], entry[6]
        assert (response.status_code, response.json().get("field")) == (status, field), (what, response.text[:300])
        assert KEY not in response.text
        # Then a correct request, its bytes made new (spaces) so that it is computed, not served from memory.
        again = http.post("/v1/score", content=json.dumps(good) + " " * (i + 1),
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert again.status_code == 200 and again.json()["results"] == before, what


def test_a_path_in_a_text_is_only_text(served, http):
    """A file path where text belongs is scored as the words it is; the server opens no file."""
    url, scorer, splits = served
    example = {"query": "/etc/passwd", "passage": "../../etc/shadow", "options": ["/etc/hosts", "/dev/zero"]}
    reply = http.post("/v1/score", json={"examples": [example], "candidates": [{}], "with_scores": True}).json()
    local = Scorer(scorer.model, max_length=MAX_LENGTH, batch_size=8, cache_bytes=0)
    expected = local.score([example_from_dict(example, 0)], [Candidate()], with_scores=True)
    assert reply["results"][0]["scores"] == expected.results[0].scores


def test_eight_clients_at_once_mixed_good_and_bad(served):
    url, _, splits = served
    rng = np.random.default_rng(8)
    goods = [_payload(splits, [{"router": rng.uniform(-3, 3, 8).tolist()}]) for _ in range(8)]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        expected = [http.post("/v1/score", json=g).json()["results"] for g in goods]
    barrier = threading.Barrier(8)
    failures: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            barrier.wait(timeout=30)
            for step in range(6):
                if (i + step) % 2:
                    entry = BAD[(7 * i + step) % len(BAD)]
                    response = _send(url, splits, entry)
                    if response.status_code != entry[5] or response.json().get("field") != entry[6]:
                        failures.append(f"client {i}, {entry[0]}: {response.status_code} {response.text[:200]}")
                else:
                    j = (i + step) % 8
                    body = json.dumps(goods[j]) + " " * (i + 1)  # each client's bytes: its own job
                    response = http.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
                    if response.status_code != 200 or response.json()["results"] != expected[j]:
                        failures.append(f"client {i}, good {j}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert not failures, failures


def test_idle_and_stalled_connections_cannot_lock_out_a_keyed_client(served):
    url, scorer, splits = served
    config = ServerConfig(max_connections=8, header_timeout_s=1.5, body_timeout_s=1.5)
    with ServerThread(create_app(scorer, [KEY], LIMITS, config)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(20)]  # more than the limit
        partial = socket.create_connection((host, int(port)))
        partial.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())  # fmt: skip
        started = time.monotonic()
        response = httpx.post(server.url + "/v1/score", json=_payload(splits, [{}]),
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=10)  # fmt: skip
        assert response.status_code == 200 and time.monotonic() - started < 1.0
        assert httpx.get(server.url + "/v1/health", timeout=5).json() == {"status": "ok"}
        stalled.settimeout(5)
        assert stalled.recv(4096).startswith(b"HTTP/1.1 408")  # the body never came
        for sock in [*idle, partial]:  # every one closed: evicted, or timed out after 1.5 s
            sock.settimeout(5)
            try:
                assert sock.recv(4096) == b""
            except ConnectionResetError:
                pass
            sock.close()
        stalled.close()
        assert time.monotonic() - started < 4


def test_health_answers_at_once_while_the_model_is_busy_and_requests_queue(served):
    url, scorer, splits = served
    rng = np.random.default_rng(45)
    bodies = [_payload(splits, [{"router": rng.uniform(-1, 1, 8).tolist()}]) for _ in range(45)]
    answers: list = [None] * len(bodies)

    def send(i: int) -> None:
        answers[i] = httpx.post(url + "/v1/score", json=bodies[i], headers={"Authorization": f"Bearer {KEY}"},
                                timeout=60)  # fmt: skip

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    scorer._lock.acquire()  # the model is busy with someone else's long request
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        assert httpx.get(url + "/v1/health", timeout=5).json() == {"status": "ok"}
        latency = time.monotonic() - started
    finally:
        scorer._lock.release()
    for thread in threads:
        thread.join(timeout=60)
    assert latency < 1.0
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and 1 <= statuses.count(200) <= ServerConfig().max_queue
    assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 503)


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one HTTP/1.1 request on ``sock`` and read its whole answer (headers and Content-Length body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_failure_is_a_500_on_a_connection_that_stays_usable(served, monkeypatch, caplog):
    url, scorer, _ = served
    monkeypatch.setattr(scorer, "stats", lambda: 1 / 0)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        first = _exchange(sock, f"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        assert first.startswith(b"HTTP/1.1 500") and b'"error":"internal error"' in first
        second = _exchange(sock, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection
        assert second.startswith(b"HTTP/1.1 200")
    assert "ZeroDivisionError" in caplog.text and KEY not in caplog.text


def test_answers_too_large_to_send_are_refused(served, http):
    """with_scores sends candidates × options numbers: past max_scores a 422, inline or for an uploaded set."""
    url, scorer, splits = served
    dataset = http.post("/v1/datasets", json={"examples": [example_to_dict(e) for e in splits[1]]}).json()
    assert dataset["options"] == sum(len(e.options) for e in splits[1]) == 16
    with ServerThread(create_app(scorer, [KEY], LIMITS, ServerConfig(max_scores=31))) as server:
        auth = {"Authorization": f"Bearer {KEY}"}
        for body in (_payload(splits, [{}, {}], with_scores=True), {"dataset": dataset["id"], "candidates": [{}, {}],
                                                                     "with_scores": True}):  # fmt: skip
            response = httpx.post(server.url + "/v1/score", json=body, headers=auth, timeout=60)
            assert response.status_code == 422 and response.json()["field"] == "with_scores", response.text
            assert httpx.post(server.url + "/v1/score", json={**body, "candidates": [{}]}, headers=auth,
                              timeout=60).status_code == 200  # 16 scores  # fmt: skip


@pytest.fixture
def slow_model(served, monkeypatch):
    """Every chunk of the served model takes at least 0.25 s; yields the list of chunk start times."""
    model = served[1].model
    forward = model.forward_with_prompts
    calls: list[float] = []

    def slow(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(0.25)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward_with_prompts", slow)
    return calls


def _slow_request(splits, seed: int) -> dict:
    """6 candidates on the 16 training examples: 6 forwards per chunk, 0.25 s each with the slow model."""
    rng = np.random.default_rng(seed)
    candidates = [{"router": rng.uniform(-4, 4, 8).tolist()} for _ in range(6)]
    return {"examples": [example_to_dict(e) for e in splits[0]], "candidates": candidates}


def _slow_forwards(scorer, splits) -> int:
    """The forwards of a whole _slow_request: 6 candidates × the chunks of the training examples."""
    return 6 * scorer.add_dataset(splits[0])["chunks"]


def test_a_client_that_disconnects_stops_its_work_within_a_chunk(served, slow_model):
    url, scorer, splits = served
    forwards = _slow_forwards(scorer, splits)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/score", json=_slow_request(splits, 1), headers={"Authorization": f"Bearer {KEY}"},
                   timeout=0.8)  # fmt: skip
    gone = len(slow_model)
    time.sleep(1.5)
    assert 1 <= gone < forwards and len(slow_model) <= gone + 1, (gone, len(slow_model))
    assert scorer._lock.acquire(timeout=0.5), "the model is still busy"
    scorer._lock.release()


def test_a_repeated_request_joins_the_running_work(served, slow_model):
    url, scorer, splits = served
    forwards = _slow_forwards(scorer, splits)
    body = _slow_request(splits, 2)
    answers: list = [None, None]

    def send(i: int) -> None:
        answers[i] = httpx.post(url + "/v1/score", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    first = threading.Thread(target=send, args=(0,))
    first.start()
    time.sleep(0.6)  # the first is running when the retry arrives
    send(1)
    first.join(timeout=60)
    assert answers[0].status_code == answers[1].status_code == 200
    assert answers[0].json() == answers[1].json()
    assert len(slow_model) == forwards  # computed once
    assert httpx.post(url + "/v1/score", json=body, headers={"Authorization": f"Bearer {KEY}"}).json() == answers[0].json()
    assert len(slow_model) == forwards  # and a retry after it finished is answered from memory


def test_inline_examples_are_scored_although_an_upload_evicts_them(served):
    """Another client's upload cannot push out inline examples between their registration and scoring."""
    url, shared, splits = served
    scorer = Scorer(shared.model, max_length=MAX_LENGTH, batch_size=8, max_datasets=1)

    class EvictingLock:  # after the first release of the model lock, another upload runs before anything else
        def __init__(self) -> None:
            self.lock, self.armed = threading.Lock(), True

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            return self.lock.acquire(blocking, timeout)

        def release(self) -> None:
            self.lock.release()
            if self.armed:
                self.armed = False
                upload = threading.Thread(target=scorer.add_dataset, args=(splits[2],))
                upload.start()
                upload.join()

    scorer._lock = EvictingLock()
    with ServerThread(create_app(scorer, [KEY], LIMITS)) as server:
        response = httpx.post(server.url + "/v1/score", json=_payload(splits, [{}]),
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
    assert not scorer._lock.armed  # the upload did run
    assert response.status_code == 200, response.text


def test_largest_legal_request_is_served_and_a_flood_of_values_is_refused_before_parsing(served):
    """Default limits: a request of the most numbers a legal one holds is scored; 16 MiB of zeros is
    refused unread (before the fix, 8.4 million numbers became Python objects: +554 MB)."""
    url, scorer, splits = served
    limits = Limits()
    with ServerThread(create_app(scorer, [KEY], limits)) as server:
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        zeros = b'{"candidates": [{"router": [' + b",".join([b"0"] * (limits.max_body_bytes // 2 - 40)) + b"]}]}"
        tracemalloc.start()
        try:
            response = httpx.post(server.url + "/v1/score", content=zeros, headers=auth, timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413 and response.json()["field"] == "body", response.text
        assert "JSON values" in response.json()["message"]
        assert peak < 6 * len(zeros), peak  # the body's copies (client and server), no parsed numbers
        dim = scorer.max_random_dim
        widest = {"intrinsic": {str(layer): [0.01] * dim for layer in range(2)}}
        largest = {"dataset": None, "examples": [example_to_dict(e) for e in splits[1][:1]],
                   "space": {"kind": "random", "seed": 0, "dim": dim, "scale": [1.0, 2.0]}, "base": widest,
                   "candidates": [widest] * limits.max_candidates}  # fmt: skip
        largest.pop("dataset")
        response = httpx.post(server.url + "/v1/score", json=largest, headers=auth, timeout=120)
        assert response.status_code == 200, response.text[:300]
        assert len(response.json()["results"]) == limits.max_candidates


def test_no_key_reaches_a_log_however_it_is_sent(served, tiny_decoder, bank_dir, tmp_path):
    """The real ``modprompt serve`` (its logging as configured for users), given the key in every wrong place."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    env = {**os.environ, API_KEY_ENV: KEY, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "modprompt.cli", "serve", "--bank", str(bank_dir), "--backbone", str(tiny_decoder),
               "--port", str(port), "--max-length", str(MAX_LENGTH), "--threads", "1", "--device", "cpu"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        body = {"api_key": KEY, KEY: 1, "candidates": [{}], "dataset": KEY}
        for method, path, headers in [
            ("GET", f"/v1/info?api_key={KEY}", {}),
            ("GET", f"/v1/info?key={KEY}&token={KEY}", {"Authorization": f"Bearer {KEY}"}),
            ("GET", f"/v1/{KEY}", {"Authorization": f"Bearer {KEY}"}),
            ("GET", f"/v1/datasets/{KEY}", {"Authorization": f"Bearer {KEY}"}),
            ("POST", "/v1/score", {"X-API-Key": KEY, "Cookie": f"key={KEY}"}),
            ("POST", "/v1/score", {"Authorization": f"Basic {KEY}"}),
            ("POST", f"/v1/score?{KEY}", {"Authorization": f"Bearer {KEY}"}),
        ]:
            response = httpx.request(method, url + path, headers=headers, json=body, timeout=30)
            assert response.status_code < 500, (path, response.status_code)  # (answers echo the sender's fields)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    text = log.read_text()
    assert KEY not in text
    assert "GET /v1/info 401" in text and "GET /v1/info 200" in text  # the access log is on


def test_keys_a_client_cannot_send_are_refused_at_start_up(monkeypatch, served):
    for key in ("ключ-0123456789abcdef", "key with spaces 0123456789", "tab\tkey-0123456789abcdef", "ü" * 20):
        monkeypatch.setenv(API_KEY_ENV, key)
        with pytest.raises(ValueError, match="visible ASCII") as err:
            load_api_keys()
        assert key not in str(err.value)
        with pytest.raises(ValueError, match="visible ASCII"):
            create_app(served[1], [key])
        with pytest.raises(ValueError, match="visible ASCII"):
            Client("http://127.0.0.1:9", key)


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


def test_the_spread_over_http_is_the_scorers(served, http):
    url, scorer, splits = served
    dataset = http.post("/v1/datasets", json={"examples": [example_to_dict(e) for e in splits[0]]}).json()["id"]
    reply = http.post("/v1/spread", json={"dataset": dataset})
    assert reply.status_code == 200, reply.text[:300]
    assert reply.json() == scorer.spread(dataset)
    remote = RemoteObjective(Client(url, KEY))
    train = remote.upload(splits[0])
    scorer._datasets.clear()  # as after a restart: the set is uploaded again
    assert remote.spread(train) == reply.json()["spread"]
    assert remote.usage.calls == 1 and remote.usage.tokens == reply.json()["tokens"]


def test_layer_cache_over_http_is_exact(served, http):
    url, scorer, splits = served
    uncached = Scorer(scorer.model, max_length=MAX_LENGTH, batch_size=8, cache_bytes=0)
    dataset = http.post("/v1/datasets", json={"examples": [example_to_dict(e) for e in splits[0]]}).json()
    chunks = dataset["chunks"]
    assert dataset["examples"] == 16 and chunks >= 2
    assert http.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert http.get("/v1/datasets/" + "e" * 32).status_code == 404
    assert uncached.add_dataset(splits[0])["id"] == dataset["id"]
    rng = np.random.default_rng(1)
    base = Candidate(router=[2.0, -2.0] * 4, intrinsic={0: rng.uniform(-1, 1, 16).tolist()})
    population = [Candidate(intrinsic={1: rng.uniform(-2, 2, 16).tolist()}) for _ in range(5)]
    body = {"dataset": dataset["id"], "base": base.to_dict(), "candidates": [c.to_dict() for c in population],
            "with_scores": True}  # fmt: skip
    reply = http.post("/v1/score", json=body).json()
    assert reply["cache"]["hits"] == 4 * chunks and reply["cache"]["blocks_skipped"] == 4 * chunks  # 4 candidates
    expected = uncached.score(dataset["id"], population, Space.bank(), base, with_scores=True)
    for got, want in zip(reply["results"], expected.results):
        assert got["loss"] == pytest.approx(want.loss, abs=1e-5)
        assert np.allclose(np.concatenate(got["scores"]), np.concatenate(want.scores), atol=1e-5, rtol=0)
    assert http.post("/v1/score", json=body).json() == reply  # the same request again: the stored answer
    again = http.post("/v1/score", json={**body, "with_scores": False}).json()  # other work: the cache's turn
    assert again["cache"]["hits"] == 5 * chunks
    assert [r["loss"] for r in again["results"]] == [r["loss"] for r in reply["results"]]


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
    import json, os, sys, time
    from modprompt.blackbox.client import Client
    from modprompt.blackbox.objective import RemoteObjective
    from modprompt.blackbox.params import example_from_dict
    from modprompt.blackbox.config import TuneConfig
    from modprompt.blackbox.tune import tune

    job = json.load(open(sys.argv[1]))
    splits = [[example_from_dict(d, i) for i, d in enumerate(part)] for part in job["splits"]]
    objective = RemoteObjective(Client(job["url"], os.environ["MODPROMPT_API_KEY"]))
    evaluate = objective.evaluate
    objective.evaluate = lambda *a, **k: (time.sleep(0.1), evaluate(*a, **k))[1]  # time to be killed mid-run
    tune(objective, "eprstmt", *splits, TuneConfig.from_dict(job["config"]), job["state"])
    """
)


def test_killed_client_resumes_where_it_stopped(served, tmp_path):
    url, _, splits = served
    config = TuneConfig("bbtv2", seed=3, prompt_evaluations=48, popsize=4, dim=8)
    state = tmp_path / "killed.state"
    job = {"url": url, "splits": [[example_to_dict(e) for e in s] for s in splits], "config": config.to_dict(),
           "state": str(state)}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job, ensure_ascii=False))
    (tmp_path / "client.py").write_text(CLIENT_SCRIPT)
    env = {**os.environ, API_KEY_ENV: KEY}
    log = (tmp_path / "client.log").open("w")
    process = subprocess.Popen([sys.executable, str(tmp_path / "client.py"), str(tmp_path / "job.json")], env=env,
                               stderr=log)  # fmt: skip
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
    log.close()
    ended = (tmp_path / "client.log").read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL, f"the client ended ({process.returncode}) before it was killed: {ended}"
    killed_at = load_state(state)
    assert killed_at["stage"] == "prompt" and 3 <= killed_at["cma"].generation < 12, killed_at["history"]

    resumed = tune(RemoteObjective(Client(url, KEY)), "eprstmt", *splits, config, state)
    straight = tune(RemoteObjective(Client(url, KEY)), "eprstmt", *splits, config, tmp_path / "straight.state")
    assert resumed["sessions"] == 2 and straight["sessions"] == 1
    for key in ("parameters", "history", "evaluations", "examples_seen", "metric", "best_dev", "spread"):
        assert resumed[key] == straight[key], key
    assert len(straight["spread"]) == 2 and min(straight["spread"]) > 0
    assert straight["evaluations"]["prompt"] == 48 and len(straight["history"]) == 12
