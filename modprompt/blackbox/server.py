"""The model server (``modprompt serve``): a frozen backbone and prompt bank behind an HTTP API.

Endpoints (JSON; every one but ``/v1/health`` needs ``Authorization: Bearer <key>``):

* ``GET  /v1/health``: ``{"status": "ok"}``, at once, however busy the model is.
* ``GET  /v1/info``: the model's shape (layers, K, n, r, intrinsic size, hidden size), the parameter
  bound, the request limits, the server's connection settings and the scorer's counters.
* ``POST /v1/datasets`` ``{"examples": [{"query", "passage", "options", "label"}, ...]}``: register
  option examples; answers ``{"id", "examples", "labelled", "tokens", "options", "chunks"}``. The id is a hash of
  the content, so uploading again is free.
* ``GET  /v1/datasets/{id}``: the sizes of a registered set (404 if the server does not hold it).
* ``POST /v1/score`` ``{"dataset": id | "examples": [...], "space", "base", "candidates", "with_scores"}``:
  loss, accuracy (and per-option scores) for every candidate; see :mod:`modprompt.blackbox.params`.
* ``POST /v1/spread`` ``{"dataset": id}``: the spread of the hidden states entering each block on a
  registered set, with no prompt (``{"dataset", "spread", "tokens"}``), which BBT and BBTv2 size their
  random projections by (:meth:`~modprompt.blackbox.scoring.Scorer.spread`). A user of a served model
  sees these per-layer numbers and nothing else of the states.

Answers to bad input: a missing or wrong key is a 401 (keys are compared in constant time, read only
from the ``Authorization`` header, and never logged however a client sends them); a body over the byte
limit, or holding more JSON values than the largest legal request (counted on the raw bytes, before any
value is made), a 413; a body that does not arrive within ``body_timeout_s`` a 408; a body that is not
UTF-8 JSON, or a malformed or out-of-limit value, a 422 naming the field (``candidates.2.intrinsic.5``);
an unknown example set a 404; a full queue or a model busy past the time limit a 503 with
``Retry-After``; scoring past the time limit a 504. Any other failure is a 500 whose details go only to
the server log, and the connection stays usable. Clients never send file paths: examples and numbers
travel in the body. A bad request changes no state, so the server keeps answering correctly after it.

Connections (:class:`ServerConfig`): a connection must deliver each request's headers within
``header_timeout_s`` of opening or of its last answer, or it is closed; at most ``max_connections`` stay
open, and one more closes the longest-idle connection that has no request in progress, those that
never sent a valid key first (uvicorn's own ``limit_concurrency`` would refuse every request, keyed or
not, once idle sockets fill it). Model work (uploads, scoring) runs one request at a time, first come
first served, in a worker thread, so the event loop keeps answering ``/v1/health`` and ``/v1/info``;
at most ``max_queue`` such requests are admitted at once (parsing, waiting or running), the rest get a
503 before their body is read. A client that disconnects stops its work within one chunk; an identical
request (same key, same body) joins the one already running, and one repeated after it finished gets
its stored answer, so a retry never runs the work twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from modprompt.blackbox.cache import LRUBytes
from modprompt.blackbox.client import API_KEY_ENV, check_api_key
from modprompt.blackbox.params import Candidate, Limits, Space, example_from_dict
from modprompt.blackbox.scoring import (
    Busy,
    Cancelled,
    DeadlineExceeded,
    ParameterError,
    Scorer,
    UnknownDataset,
    check_text,
)

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v1/health"})
#: validation errors listed in one answer (a large bad request could otherwise echo thousands)
MAX_ERRORS = 20
#: characters of a field name or message echoed back (an unknown key can be megabytes long)
MAX_ECHO = 200
#: where the per-connection record travels in an ASGI scope's ``state`` (see ``_protocol_class``)
_CONNECTION = "modprompt.connection"
_CLIENT = "modprompt.client"
_DATASET_ID = re.compile(r"^[0-9a-f]{32}$")
#: a JSON string, escapes included (unrolled, so long strings cost no backtracking)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


@dataclass
class ServerConfig:
    """How the server treats connections and queues model work (what one request may carry: :class:`Limits`)."""

    #: open connections; one more closes the longest-idle one that has no request in progress
    max_connections: int = 64
    #: seconds a connection may take to deliver a request's headers (after opening or its last answer)
    header_timeout_s: float = 10.0
    #: seconds a request may take to deliver its body once its headers arrived
    body_timeout_s: float = 60.0
    #: seconds an idle keep-alive connection stays open after an answer (uvicorn's ``timeout_keep_alive``)
    keep_alive_s: int = 5
    #: bytes of a request's start line and headers (h11's ``max_incomplete_event_size``)
    max_header_bytes: int = 16 * 1024
    #: model requests (uploads, scoring) admitted at once: parsing, waiting for the model or running
    max_queue: int = 8
    #: option scores one answer may carry (candidates × the options of every example, with_scores)
    max_scores: int = 2**20
    #: bytes of recent answers kept for repeated requests
    answer_cache_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


# -- request bodies -------------------------------------------------------------------------------------

Number = Annotated[float, Field(allow_inf_nan=False)]
Layer = Annotated[int, Field(strict=False)]  # JSON object keys are strings: "3" names layer 3


class _In(BaseModel):
    # Strict: a client that sends "1.5" or true for a number, or 1.0 for a label, has a bug to hear about.
    model_config = ConfigDict(extra="forbid", strict=True)


class ExampleIn(_In):
    query: str
    passage: str
    options: list[str] = Field(min_length=1)
    label: int | None = None

    @field_validator("label")
    @classmethod
    def _label_in_range(cls, label: int | None, info: ValidationInfo) -> int | None:
        options = info.data.get("options")
        if label is not None and options is not None and not 0 <= label < len(options):
            raise ValueError(f"label {label} is not an index of the {len(options)} options")
        return label


class CandidateIn(_In):
    router: list[Number | list[Number]] | None = None
    intrinsic: dict[Layer, list[Number]] = Field(default_factory=dict)

    def to_candidate(self) -> Candidate:
        return Candidate(self.router, dict(self.intrinsic))


class SpaceIn(_In):
    kind: Literal["bank", "random"] = "bank"
    seed: int = Field(0, ge=0, lt=2**32)
    dim: int = Field(0, ge=0)
    scale: list[Number] | None = None


class SpreadIn(_In):
    dataset: str = Field(pattern=r"^[0-9a-f]{32}$")


class UploadIn(_In):
    examples: list[ExampleIn]


class ScoreIn(_In):
    dataset: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    examples: list[ExampleIn] | None = None
    space: SpaceIn = Field(default_factory=SpaceIn)
    base: CandidateIn | None = None
    candidates: list[CandidateIn] = Field(min_length=1)
    with_scores: bool = False


@dataclass
class _ScoreWork:
    """A validated score request, its numbers packed into arrays (8 bytes each, not a Python float's 32)."""

    dataset_id: str
    examples: list | None  # MRCExamples given inline, registered and scored under one hold of the model
    candidates: list[Candidate]
    space: Space
    base: Candidate | None
    with_scores: bool


class _Problem(Exception):
    """An answer other than 200 that the server chose, with the field it names."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.extra = status, error, message, field, extra


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _field(loc: Sequence) -> str:
    """A pydantic error location as a dotted field path, without the type tags of unions and keys."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("float", "int", "list")))]
    return ".".join(parts) or "body"


def _echo(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"


def _json_bytes(data: Any) -> bytes:
    # ASCII escapes: a field name may hold a lone surrogate that UTF-8 cannot encode. NaN stays
    # NaN (Python's json reads it) rather than failing an answer the model did compute.
    return json.dumps(data, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode()


def _problem_body(status: int, error: str, message: str, field: str | None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error": error, "message": _echo(message)}
    if field is not None:
        body["field"] = _echo(field)
    return _json_bytes(body | extra)


def _problem(status: int, error: str, message: str, field: str | None = None, **extra: Any) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else {}
    if status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is not read: the connection cannot be reused
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    content = _problem_body(status, error, message, field, **extra)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


async def _send_problem(send: Callable, status: int, error: str, message: str, field: str | None = None) -> None:
    """A problem answer from a plain ASGI middleware."""
    response = _problem(status, error, message, field)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def value_budget(scorer: Scorer, limits: Limits) -> int:
    """The most JSON values (numbers, strings, lists, objects, object members) a legal request holds.

    The largest legal request is the largest population (``max_candidates`` and a base, each with a
    router per layer and a vector of the widest space at every layer, in a space with a scale per layer)
    or the largest example set (``max_examples`` with ``max_options`` each), whichever is larger; a body
    holding more values is refused before any of them is made.
    """
    c = scorer.config
    width = max(c.num_tokens * c.rank, scorer.max_random_dim)
    # Per layer: K logits and a vector, each in its own list; a few brackets and members around them.
    candidate = c.num_layers * (c.num_modules + width + 2) + 8
    example = limits.max_options + 8  # the options, 4 members, the object and the options list
    return (limits.max_candidates + 1) * candidate + limits.max_examples * example + c.num_layers + 64


def _count_values(body: bytes, budget: int) -> int:
    """An upper bound on the JSON values in ``body`` (exact outside strings); cheap on the raw bytes."""
    count = body.count(b",") + body.count(b"[") + body.count(b"{") + 1
    if count > budget:  # commas inside strings may have been counted: count again without the strings
        stripped = _JSON_STRING.sub(b'""', body)
        count = stripped.count(b",") + stripped.count(b"[") + stripped.count(b"{") + 1
    return count


def _json(body: bytes, content_type: str | None, budget: int) -> Any:
    """``body`` as JSON, or a :class:`_Problem` naming what is wrong with it."""
    if content_type is not None:
        kind, _, params = content_type.partition(";")
        charset = params.partition("charset=")[2].strip().strip('"').lower()
        if kind.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
            raise _Problem(415, "unsupported media type", "send application/json in UTF-8", "content-type")
    values = _count_values(body, budget)
    if values > budget:
        raise _Problem(413, "request too large", f"the body holds about {values} JSON values; the largest legal "
                       f"request holds {budget}", "body")  # fmt: skip
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Problem(422, "invalid request", f"the body is not UTF-8 (byte {err.start})", "body") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _Problem(422, "invalid request", f"the body is not JSON: {err}", "body") from None
    except RecursionError:
        raise _Problem(422, "invalid request", "the body is nested too deeply", "body") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise _Problem(422, "invalid request", f"the body holds an unreadable value: {err}", "body") from None


def _validate(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": _echo(_field(e["loc"])), "message": _echo(e["msg"].removeprefix("Value error, "))}
                  for e in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]]  # fmt: skip
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        raise _Problem(422, "invalid request", first["message"], first["field"], errors=errors) from None


def _packed(candidate: Candidate) -> Candidate:
    router = None if candidate.router is None else np.asarray(candidate.router, dtype=np.float64)
    return Candidate(router, {layer: np.asarray(v, dtype=np.float64) for layer, v in candidate.intrinsic.items()})


class _Jobs:
    """Model work: one job at a time, first come first served; identical requests share one job.

    A job is keyed by the client's key and the request's bytes. A request that arrives while an
    identical one runs waits for the same answer; one that arrives after it finished gets the stored
    answer. A job whose every client disconnected is cancelled: it leaves the queue, or, running,
    stops before its next chunk.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.running: dict[bytes, _Job] = {}
        self.answers = LRUBytes(config.answer_cache_bytes)
        self.gate = asyncio.Semaphore(1)  # FIFO; binds to the server's loop when first awaited
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="modprompt-model")

    async def run(self, key: bytes, work: Callable[[Callable[[], bool]], bytes], deadline: float,
                  receive: Callable, keep: bool = True) -> bytes:  # fmt: skip
        """``work(cancelled)``'s answer; ``keep``: store it for repeats (work without side effects)."""
        stored = self.answers.get(key) if keep else None
        if stored is not None:
            return stored
        job = self.running.get(key)
        if job is None or job.cancelled.is_set():  # a cancelled job may still be finishing its chunk
            job = self.running[key] = _Job()
            job.task = asyncio.get_running_loop().create_task(self._execute(key, job, work, deadline, keep))
            job.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, if nobody waits
        job.waiters += 1
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({job.task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if job.task.done():
                return job.task.result()
            raise _ClientGone
        finally:
            gone.cancel()
            job.waiters -= 1
            if job.waiters == 0 and not job.task.done():
                job.cancelled.set()
                if not job.started:
                    job.task.cancel()

    async def _execute(self, key: bytes, job: _Job, work: Callable, deadline: float, keep: bool) -> bytes:
        try:
            if self.gate.locked():
                try:
                    await asyncio.wait_for(self.gate.acquire(), max(deadline - time.monotonic(), 0.0))
                except TimeoutError:
                    raise Busy("the model stayed busy with other requests for the whole time limit") from None
            else:
                await self.gate.acquire()
            job.started = True
            try:
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(self.model_thread, work, job.cancelled.is_set)
            finally:
                self.gate.release()
            if keep:
                self.answers.put(key, answer, len(answer))
            return answer
        finally:
            if self.running.get(key) is job:
                del self.running[key]


async def _disconnected(receive: Callable) -> None:
    """Returns when the client has disconnected (after the body, that is the connection's next message)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class _Job:
    task: asyncio.Task | None = None
    waiters: int = 0
    started: bool = False

    def __post_init__(self) -> None:
        self.cancelled = threading.Event()


class _Guard:
    """Outermost: one access-log line per request (method, route template, status, time: never a query
    string or a raw path, where a careless client might have put its key), and a 500 for any failure
    that keeps the connection usable (the details, keys blanked, go to the server log)."""

    def __init__(self, app, keys: Sequence[str], routes: Sequence) -> None:
        self.app = app
        self.keys = [k for k in keys if k]
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def recording(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        except Exception:
            details = traceback.format_exc()
            for key in self.keys:
                details = details.replace(key, "<key>")
            logger.error("%s %s failed:\n%s", scope["method"], self._route(scope), details)
            if status == 0:
                message = "the server failed on this request; its log has the details"
                await _send_problem(recording, 500, "internal error", message)
        finally:
            logger.info("%s %s %d %.3fs", scope["method"], self._route(scope), status, time.perf_counter() - started)

    def _route(self, scope) -> str:
        """The route template a request matches (also when it was refused before routing)."""
        from starlette.routing import Match

        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                return route.path
        return "(no such route)"


class _ApiKey:
    """401 unless ``Authorization: Bearer <key>`` holds one of the keys (constant-time comparison).

    A keyed request marks its connection trusted (it is closed last when connections run out) and
    records which key it used (identical requests share work per key).
    """

    def __init__(self, app, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        # Every key is compared, so the time taken says nothing about which one nearly matched.
        matches = [hmac.compare_digest(given.strip(), k) for k in self.keys]
        if scheme.lower() != b"bearer" or not any(matches):
            hint = " (keys in the URL are never read)" if scope.get("query_string") else ""
            message = f"a valid API key is needed in the header Authorization: Bearer <key>{hint}"
            return await _send_problem(send, 401, "unauthorized", message, "authorization")
        state = scope.setdefault("state", {})
        connection = state.get(_CONNECTION)
        if connection is not None:
            connection.trusted = True
        state[_CLIENT] = matches.index(True)
        await self.app(scope, receive, send)


class _Body:
    """Reads the whole body before the app sees it: 503 when ``max_queue`` model requests are already
    admitted, 413 past ``max_bytes`` (declared or counted as it arrives), 408 past ``timeout_s``; then
    hands the app the body in one message and, after it, the connection's own messages (the disconnect)."""

    def __init__(self, app, max_bytes: int, timeout_s: float, max_queue: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.admitted = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_problem(send, 413, "request too large", f"the body is over {self.max_bytes} bytes",
                                       "body")  # fmt: skip
        model_work = scope["method"] == "POST"
        if model_work and self.admitted >= self.max_queue:
            message = f"{self.max_queue} requests for the model are already admitted; try again"
            return await _send_problem(send, 503, "busy", message)
        self.admitted += model_work
        try:
            await self._read_and_call(scope, receive, send)
        finally:
            self.admitted -= model_work

    async def _read_and_call(self, scope, receive, send):
        deadline = time.monotonic() + self.timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                message_text = f"the body did not arrive within {self.timeout_s:g} s"
                return await _send_problem(send, 408, "request timeout", message_text, "body")
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_problem(send, 413, "request too large", f"the body is over {self.max_bytes} bytes",
                                           "body")  # fmt: skip
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending: list[bytes] | None = chunks

        async def replay():
            nonlocal pending
            if pending is not None:
                body, pending = b"".join(pending), None  # no copy of the body stays here
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        del chunks

        await self.app(scope, replay, send)


def create_app(
    scorer: Scorer, api_keys: Sequence[str], limits: Limits = Limits(), config: ServerConfig = ServerConfig()
) -> FastAPI:
    """The HTTP API around ``scorer`` (see the module docstring)."""
    check_keys(api_keys)
    app = FastAPI(title="modprompt model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server_config = config  # the connection settings travel with the app (uvicorn_config reads them)
    budget = value_budget(scorer, limits)
    jobs = _Jobs(config)
    # One parse at a time: parsing holds the GIL, and its transient objects are the largest a request makes.
    parser = ThreadPoolExecutor(1, thread_name_prefix="modprompt-parse")

    def examples_of(items: list[ExampleIn]) -> list:
        if len(items) > limits.max_examples:
            raise ParameterError("examples", f"at most {limits.max_examples} examples per request")
        for i, item in enumerate(items):
            if len(item.options) > limits.max_options:
                raise ParameterError(f"examples.{i}.options", f"at most {limits.max_options} options")
            texts = [("query", item.query), ("passage", item.passage)]
            texts += [(f"options.{j}", option) for j, option in enumerate(item.options)]
            for name, text in texts:
                if len(text) > limits.max_text_chars:
                    raise ParameterError(f"examples.{i}.{name}", f"at most {limits.max_text_chars} characters")
                check_text(text, f"examples.{i}.{name}")
        return [example_from_dict(item.model_dump(), i) for i, item in enumerate(items)]

    def parse_upload(body: bytes, content_type: str | None) -> list:
        upload = _validate(UploadIn, _json(body, content_type, budget))
        return examples_of(upload.examples)

    def check_scores(candidates: int, options: int) -> None:
        """The answer's size: with_scores sends a number per option of every example for every candidate."""
        if candidates * options > config.max_scores:
            raise ParameterError("with_scores", f"{candidates * options} option scores asked for; at most "
                                 f"{config.max_scores} per request: send fewer candidates or examples")  # fmt: skip

    def parse_score(body: bytes, content_type: str | None) -> _ScoreWork:
        request = _validate(ScoreIn, _json(body, content_type, budget))
        if (request.dataset is None) == (request.examples is None):
            raise ParameterError("dataset", "give exactly one of 'dataset' (an uploaded id) and 'examples'")
        if len(request.candidates) > limits.max_candidates:
            raise ParameterError("candidates", f"at most {limits.max_candidates} candidates per request")
        examples = examples_of(request.examples) if request.examples is not None else None
        candidates = [c.to_candidate() for c in request.candidates]
        base = request.base.to_candidate() if request.base is not None else None
        space = Space(**request.space.model_dump())
        scorer.check_request(candidates, space, base)  # before queueing: a bad request waits for nothing
        if request.with_scores:
            options = sum(len(e.options) for e in examples) if examples is not None else None
            check_scores(len(candidates), options if options is not None else scorer.dataset(request.dataset)["options"])
        dataset_id = scorer.dataset_id(examples) if examples is not None else request.dataset
        return _ScoreWork(dataset_id, examples, [_packed(c) for c in candidates], space,
                          None if base is None else _packed(base), request.with_scores)  # fmt: skip

    async def parsed(request: Request, parse: Callable) -> tuple[Any, bytes]:
        """The parsed body (parsed in a worker thread) and the key of its job: the client's key and the bytes."""
        body = (await request.receive()).get("body", b"")  # _Body hands the whole body in one message
        client = request.scope.get("state", {}).get(_CLIENT, -1)
        key = hashlib.sha256(f"{client}:{request.url.path}:".encode() + body).digest()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(parser, parse, body, request.headers.get("content-type")), key

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info() -> dict:
        return {**scorer.info(limits).to_dict(), "server": config.to_dict(), "stats": scorer.stats()}

    @app.post("/v1/datasets")
    async def upload(request: Request) -> Response:
        deadline = time.monotonic() + limits.timeout_s
        examples, key = await parsed(request, parse_upload)

        def work(cancelled: Callable[[], bool]) -> bytes:
            return _json_bytes(scorer.add_dataset(examples, deadline - time.monotonic(), cancelled))

        # Not kept: an upload registers the set, and a repeat after a restart or eviction must do so again.
        answer = await jobs.run(key, work, deadline, request.receive, keep=False)
        return Response(answer, status_code=201, media_type="application/json")

    @app.get("/v1/datasets/{dataset_id}")
    async def dataset(dataset_id: str) -> dict:
        if not _DATASET_ID.match(dataset_id):
            raise ParameterError("dataset", "an example set id is 32 hexadecimal digits")
        return scorer.dataset(dataset_id)

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        started = time.monotonic()
        deadline = started + limits.timeout_s
        todo, key = await parsed(request, parse_score)

        def work(cancelled: Callable[[], bool]) -> bytes:
            reply = scorer.score(
                todo.examples if todo.examples is not None else todo.dataset_id,
                todo.candidates, todo.space, todo.base,
                with_scores=todo.with_scores, deadline=deadline, cancelled=cancelled,
            )  # fmt: skip
            return _json_bytes({**reply.to_dict(), "dataset": todo.dataset_id, "seconds": time.monotonic() - started})

        answer = await jobs.run(key, work, deadline, request.receive)
        return Response(answer, media_type="application/json")

    def parse_spread(body: bytes, content_type: str | None) -> str:
        request = _validate(SpreadIn, _json(body, content_type, budget))
        scorer.dataset(request.dataset)  # 404 before queueing
        return request.dataset

    @app.post("/v1/spread")
    async def spread(request: Request) -> Response:
        deadline = time.monotonic() + limits.timeout_s
        dataset_id, key = await parsed(request, parse_spread)

        def work(cancelled: Callable[[], bool]) -> bytes:
            return _json_bytes(scorer.spread(dataset_id, deadline - time.monotonic(), cancelled))

        answer = await jobs.run(key, work, deadline, request.receive)
        return Response(answer, media_type="application/json")

    @app.exception_handler(_Problem)
    async def problem(request: Request, exc: _Problem) -> Response:
        return _problem(exc.status, exc.error, exc.message, exc.field, **exc.extra)

    @app.exception_handler(ParameterError)
    async def bad_parameter(request: Request, exc: ParameterError) -> Response:
        return _problem(422, "invalid request", exc.message, exc.field)

    @app.exception_handler(UnknownDataset)
    async def unknown(request: Request, exc: UnknownDataset) -> Response:
        return _problem(404, "unknown dataset", str(exc), "dataset")

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> Response:
        return _problem(503, "busy", str(exc))

    @app.exception_handler(DeadlineExceeded)
    async def too_slow(request: Request, exc: DeadlineExceeded) -> Response:
        return _problem(504, "time limit", f"{exc} (limit {limits.timeout_s:g} s)")

    @app.exception_handler(_ClientGone)
    @app.exception_handler(Cancelled)
    async def gone(request: Request, exc: Exception) -> Response:
        logger.info("%s %s: the client disconnected; its work stopped", request.method, request.url.path)
        return _problem(499, "client gone", "the client disconnected")  # nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        field = {404: "path", 405: "method"}.get(exc.status_code)
        return _problem(exc.status_code, "http error", str(exc.detail), field)

    # Added last = outermost: logging and the catch-all wrap everything; a request without a valid key is
    # refused before its body is read.
    app.add_middleware(_Body, max_bytes=limits.max_body_bytes, timeout_s=config.body_timeout_s,
                       max_queue=config.max_queue)  # fmt: skip
    app.add_middleware(_ApiKey, keys=list(api_keys))
    app.add_middleware(_Guard, keys=list(api_keys), routes=app.router.routes)
    return app


def check_keys(keys: Sequence[str]) -> None:
    """Raise ValueError unless there is a key and every key is one the client can send."""
    if not keys:
        raise ValueError(f"the server needs an API key: set {API_KEY_ENV} or pass --api-key-file")
    for key in keys:
        check_api_key(key)


def load_api_keys(key_file: str | Path | None = None) -> list[str]:
    """Keys from ``key_file`` (one per line, ``#`` comments) or else ``$MODPROMPT_API_KEY`` (comma-separated)."""
    if key_file is not None:
        lines = Path(key_file).read_text().splitlines()
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        keys = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    check_keys(keys)
    return keys


# -- connections ----------------------------------------------------------------------------------------


class _ConnectionRecord:
    """What the app tells the connection it arrived on: whether it ever sent a valid key."""

    __slots__ = ("trusted",)

    def __init__(self) -> None:
        self.trusted = False


def _protocol_class(config: ServerConfig) -> type:
    """uvicorn's h11 protocol with what it lacks against idle and slow clients (see the module docstring).

    uvicorn times out a connection only between requests, and its ``limit_concurrency`` counts idle
    connections against the limit, so sockets that never send a byte lock every client out.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.record = _ConnectionRecord()
            # The app state is copied into every request's scope: the app marks the record through it.
            self.app_state = {**self.app_state, _CONNECTION: self.record}
            self.idle_since = time.monotonic()
            self._waiting_after: Any = None
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._expect_request()
            if len(self.connections) > config.max_connections:
                self._make_room()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.idle_since = time.monotonic()
                self._expect_request()

        def connection_lost(self, exc) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _expect_request(self) -> None:
            """Close the connection unless a new request's headers arrive within the header timeout."""
            if self._timer is not None:
                self._timer.cancel()
            self._waiting_after = self.cycle  # a new request replaces the cycle
            self._timer = self.loop.call_later(config.header_timeout_s, self._no_request)

        def _no_request(self) -> None:
            self._timer = None
            if self.cycle is self._waiting_after and not self.transport.is_closing():
                logger.info("closed a connection from %s: no request within %g s", self._peer(), config.header_timeout_s)
                self.transport.close()

        def _idle(self) -> bool:
            return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

        def _peer(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

        def _make_room(self) -> None:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._idle()]
            if not idle:
                logger.warning("refused a connection from %s: %d connections, each with a request in progress",
                               self._peer(), len(self.connections) - 1)  # fmt: skip
                self.transport.close()
                return
            # Connections that never sent a valid key go first, then the longest idle.
            victim = min(idle, key=lambda c: (c.record.trusted, c.idle_since))
            logger.info("closed an idle connection from %s to make room (at most %d)", victim._peer(),
                        config.max_connections)  # fmt: skip
            victim.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app: FastAPI, host: str, port: int, **options):
    """The uvicorn settings ``serve`` runs ``app`` with (tests and benchmarks run the same)."""
    import uvicorn

    config: ServerConfig = app.state.server_config
    return uvicorn.Config(
        app, host=host, port=port, http=_protocol_class(config), ws="none", lifespan="off",
        timeout_keep_alive=config.keep_alive_s, h11_max_incomplete_event_size=config.max_header_bytes,
        access_log=False,  # _Guard writes the access log, without query strings
        **options,
    )  # fmt: skip


class ServerThread:
    """Runs an app with uvicorn on a background thread, e.g. on port 0 of the loopback (tests, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **options) -> None:
        import uvicorn

        options = {"log_level": "warning", "log_config": None, **options}  # the test's or caller's logging
        self.server = uvicorn.Server(uvicorn_config(app, host, port, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(
    bank: str | Path,
    backbone: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: Sequence[str],
    limits: Limits = Limits(),
    config: ServerConfig = ServerConfig(),
    **scorer_options,
) -> None:
    """Load the bank and its backbone and serve them until interrupted."""
    import uvicorn

    check_keys(api_keys)
    scorer = Scorer.from_bank(bank, backbone, max_datasets=limits.max_datasets, **scorer_options)
    app = create_app(scorer, api_keys, limits, config)
    info = scorer.info(limits)
    logger.info(
        "serving bank %s on %s (%d layers, K %d, n %d, r %d; %s) at http://%s:%d with %d API key(s); limits %s; "
        "connections %s",
        bank, info.backbone["name"], info.num_layers, info.num_modules, info.num_tokens, info.rank, scorer.device,
        host, port, len(api_keys), json.dumps(limits.to_dict()), json.dumps(config.to_dict()),
    )  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without TLS: keys and data cross the network in clear", host)
    uvicorn.Server(uvicorn_config(app, host, port, log_level="info")).run()
