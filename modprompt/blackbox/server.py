"""The model server (``modprompt serve``): a frozen backbone and prompt bank behind an HTTP API.

Endpoints (JSON; every one but ``/v1/health`` needs ``Authorization: Bearer <key>``):

* ``GET  /v1/health``: ``{"status": "ok"}``.
* ``GET  /v1/info``: the model's shape (layers, K, n, r, intrinsic size, hidden size), the parameter
  bound, the request limits and the scorer's counters.
* ``POST /v1/datasets`` ``{"examples": [{"query", "passage", "options", "label"}, ...]}``: register
  option examples; answers ``{"id", "examples", "labelled", "tokens", "chunks"}``. The id is a hash of
  the content, so uploading again is free.
* ``GET  /v1/datasets/{id}``: the sizes of a registered set (404 if the server does not hold it).
* ``POST /v1/score`` ``{"dataset": id | "examples": [...], "space", "base", "candidates", "with_scores"}``:
  loss, accuracy (and per-option scores) for every candidate; see :mod:`modprompt.blackbox.params`.

Robustness: a missing or wrong key is a 401 (keys are compared in constant time and never logged); a
body over the byte limit a 413; a malformed or out-of-limit value a 422 naming the field
(``candidates.2.intrinsic.5``); an unknown example set a 404; a model busy past the time limit a 503
with ``Retry-After``; scoring past the time limit a 504; anything else a 500 whose details go only to
the server log. Clients never send file paths: examples and numbers travel in the body. One lock keeps
model work serial; a bad request changes no state, so the server keeps answering correctly after it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from modprompt.blackbox.client import API_KEY_ENV
from modprompt.blackbox.params import Candidate, Limits, Space, example_from_dict
from modprompt.blackbox.scoring import Busy, DeadlineExceeded, ParameterError, Scorer, UnknownDataset

logger = logging.getLogger(__name__)

#: keys shorter than this are refused: they could be guessed
MIN_KEY_LENGTH = 16
PUBLIC_PATHS = frozenset({"/v1/health"})
#: validation errors listed in one answer (a large bad request could otherwise echo thousands)
MAX_ERRORS = 20

Number = Annotated[float, Field(allow_inf_nan=False)]


class ExampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    router: list[Number | list[Number]] | None = None
    intrinsic: dict[int, list[Number]] = Field(default_factory=dict)

    def to_candidate(self) -> Candidate:
        return Candidate(self.router, dict(self.intrinsic))


class SpaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["bank", "random"] = "bank"
    seed: int = Field(0, ge=0, lt=2**32)
    dim: int = Field(0, ge=0)


class UploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[ExampleIn]


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    examples: list[ExampleIn] | None = None
    space: SpaceIn = Field(default_factory=SpaceIn)
    base: CandidateIn | None = None
    candidates: list[CandidateIn] = Field(min_length=1)
    with_scores: bool = False


def _field(loc: Sequence) -> str:
    """A pydantic error location as a dotted field path, without the body root and the type tags."""
    parts = [str(p) for p in loc[1:] if not (isinstance(p, str) and ("[" in p or p in ("float", "int", "list")))]
    return ".".join(parts) or "body"


def _problem(status: int, error: str, message: str, field: str | None = None, **extra) -> JSONResponse:
    body = {"error": error, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body | extra, status_code=status)


class _BodyLimit:
    """413 for a body over ``max_bytes``, declared (Content-Length) or streamed (counted as it arrives)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = _problem(413, "request too large", f"the body is over {self.max_bytes} bytes", "body")
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # fastapi re-raises its own HTTPException while reading the body, so this becomes the 413.
                raise HTTPException(413, f"the body is over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


class _ApiKey:
    """401 unless ``Authorization: Bearer <key>`` holds one of the keys (constant-time comparison)."""

    def __init__(self, app, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        # Every key is compared, so the time taken says nothing about which one nearly matched.
        valid = scheme.lower() == b"bearer" and sum(hmac.compare_digest(given.strip(), k) for k in self.keys) > 0
        if not valid:
            response = _problem(401, "unauthorized", "a valid API key is needed (Authorization: Bearer <key>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(scorer: Scorer, api_keys: Sequence[str], limits: Limits = Limits()) -> FastAPI:
    """The HTTP API around ``scorer`` (see the module docstring)."""
    check_keys(api_keys)
    app = FastAPI(title="modprompt model server", docs_url=None, redoc_url=None, openapi_url=None)

    def examples_of(items: list[ExampleIn]):
        if len(items) > limits.max_examples:
            raise ParameterError("examples", f"at most {limits.max_examples} examples per request")
        for i, item in enumerate(items):
            if len(item.options) > limits.max_options:
                raise ParameterError(f"examples.{i}.options", f"at most {limits.max_options} options")
            for name in ("query", "passage"):
                if len(getattr(item, name)) > limits.max_text_chars:
                    raise ParameterError(f"examples.{i}.{name}", f"at most {limits.max_text_chars} characters")
            for j, option in enumerate(item.options):
                if len(option) > limits.max_text_chars:
                    raise ParameterError(f"examples.{i}.options.{j}", f"at most {limits.max_text_chars} characters")
        return [example_from_dict(item.model_dump(), i) for i, item in enumerate(items)]

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    def info() -> dict:
        return {**scorer.info(limits).to_dict(), "stats": scorer.stats()}

    @app.post("/v1/datasets", status_code=201)
    def upload(body: UploadIn) -> dict:
        return scorer.add_dataset(examples_of(body.examples), lock_timeout=limits.timeout_s)

    @app.get("/v1/datasets/{dataset_id}")
    def dataset(dataset_id: str) -> dict:
        return scorer.dataset(dataset_id)

    @app.post("/v1/score")
    def score(body: ScoreIn) -> dict:
        started = time.monotonic()
        deadline = started + limits.timeout_s
        if (body.dataset is None) == (body.examples is None):
            raise ParameterError("dataset", "give exactly one of 'dataset' (an uploaded id) and 'examples'")
        if len(body.candidates) > limits.max_candidates:
            raise ParameterError("candidates", f"at most {limits.max_candidates} candidates per request")
        if body.dataset is not None:
            dataset_id = body.dataset
        else:
            dataset_id = scorer.add_dataset(examples_of(body.examples), lock_timeout=deadline - time.monotonic())["id"]
        reply = scorer.score(
            dataset_id,
            [c.to_candidate() for c in body.candidates],
            Space(**body.space.model_dump()),
            body.base.to_candidate() if body.base is not None else None,
            with_scores=body.with_scores,
            deadline=deadline,
        )
        return {**reply.to_dict(), "dataset": dataset_id, "seconds": time.monotonic() - started}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e["loc"]), "message": e["msg"].removeprefix("Value error, ")} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return _problem(422, "invalid request", first["message"], first["field"], errors=errors[:MAX_ERRORS])

    @app.exception_handler(ParameterError)
    async def bad_parameter(request: Request, exc: ParameterError) -> JSONResponse:
        return _problem(422, "invalid request", exc.message, exc.field)

    @app.exception_handler(UnknownDataset)
    async def unknown(request: Request, exc: UnknownDataset) -> JSONResponse:
        return _problem(404, "unknown dataset", str(exc), "dataset")

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        response = _problem(503, "busy", str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(DeadlineExceeded)
    async def too_slow(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return _problem(504, "time limit", f"{exc} (limit {limits.timeout_s:g} s)")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = "body" if exc.status_code == 413 else None
        return _problem(exc.status_code, "request too large" if field else "http error", str(exc.detail), field)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _problem(500, "internal error", "the server failed on this request; its log has the details")

    # Added last = outermost: a request without a valid key is refused before its body is read.
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(_ApiKey, keys=list(api_keys))
    return app


def check_keys(keys: Sequence[str]) -> None:
    if not keys:
        raise ValueError(f"the server needs an API key: set {API_KEY_ENV} or pass --api-key-file")
    for key in keys:
        if len(key) < MIN_KEY_LENGTH or any(ch.isspace() for ch in key):
            raise ValueError(f"API keys must be at least {MIN_KEY_LENGTH} characters without spaces")


def load_api_keys(key_file: str | Path | None = None) -> list[str]:
    """Keys from ``key_file`` (one per line, ``#`` comments) or else ``$MODPROMPT_API_KEY`` (comma-separated)."""
    if key_file is not None:
        lines = Path(key_file).read_text().splitlines()
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        keys = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    check_keys(keys)
    return keys


class ServerThread:
    """Runs an app with uvicorn on a background thread, e.g. on port 0 of the loopback (tests, benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **options) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, **options)
        self.server = uvicorn.Server(config)
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
    **scorer_options,
) -> None:
    """Load the bank and its backbone and serve them until interrupted."""
    import uvicorn

    check_keys(api_keys)
    scorer = Scorer.from_bank(bank, backbone, max_datasets=limits.max_datasets, **scorer_options)
    app = create_app(scorer, api_keys, limits)
    info = scorer.info(limits)
    logger.info(
        "serving bank %s on %s (%d layers, K %d, n %d, r %d; %s) at http://%s:%d with %d API key(s); limits %s",
        bank, info.backbone["name"], info.num_layers, info.num_modules, info.num_tokens, info.rank, scorer.device,
        host, port, len(api_keys), json.dumps(limits.to_dict()),
    )  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without TLS: keys and data cross the network in clear", host)
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=64)
