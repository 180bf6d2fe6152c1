"""HTTP client of a served model (``modprompt serve``): timeouts, retries with backoff, accounting.

Connection errors, timeouts and 5xx answers are retried with exponential backoff (with jitter, and
the server's ``Retry-After`` when it gives one); a 4xx answer is the caller's mistake and is raised at
once as :class:`ServerError` naming the field the server named. The API key travels in the
``Authorization: Bearer`` header and never appears in logs, errors or ``repr``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import asdict, dataclass

import httpx

logger = logging.getLogger(__name__)

API_KEY_ENV = "MODPROMPT_API_KEY"
#: keys shorter than this are refused: they could be guessed
MIN_KEY_LENGTH = 16
#: what a key may hold: visible ASCII, which every HTTP client sends in a header as it is (httpx, like the
#: HTTP standard, encodes header values as ASCII, so a non-ASCII key could never reach the server)
_KEY_CHARACTERS = re.compile(r"[\x21-\x7e]+")


def check_api_key(key: str) -> None:
    """Raise ValueError (never showing the key) unless ``key`` can be sent and is long enough."""
    if not _KEY_CHARACTERS.fullmatch(key):
        raise ValueError(
            "an API key may hold only visible ASCII characters (letters, digits, punctuation; no spaces or "
            "accented letters): HTTP headers carry nothing else; make one with "
            "python -c \"import secrets; print(secrets.token_urlsafe(32))\""
        )
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"API keys must be at least {MIN_KEY_LENGTH} characters")


class ServerError(RuntimeError):
    """The server refused a request (4xx), or kept failing (5xx, connection) after every retry."""

    def __init__(self, status: int | None, message: str, field: str | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"server answered {status}{where}: {message}" if status else message)
        self.status = status
        self.field = field
        self.message = message


@dataclass
class ClientStats:
    calls: int = 0  # requests that got an answer the caller used
    attempts: int = 0  # every try, retries included
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    tokens: int = 0  # input tokens the server reports having forwarded for this client
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Client:
    """Calls one served model; see the module docstring."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float = 300.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if api_key:
            check_api_key(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = ClientStats()
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self) -> dict:
        return self._request("GET", "/v1/health")

    def info(self) -> dict:
        return self._request("GET", "/v1/info")

    def upload(self, examples: list[dict]) -> dict:
        """Register examples (``query``, ``passage``, ``options``, ``label``); returns their id and sizes."""
        return self._request("POST", "/v1/datasets", {"examples": examples})

    def spread(self, dataset_id: str) -> dict:
        """The per-layer spread of the hidden states on a registered set (``POST /v1/spread``)."""
        return self._request("POST", "/v1/spread", {"dataset": dataset_id})

    def score(self, body: dict) -> dict:
        reply = self._request("POST", "/v1/score", body)
        self.stats.tokens += reply.get("tokens", 0)
        return reply

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        started = time.perf_counter()
        try:
            attempt = 0
            while True:
                self.stats.attempts += 1
                wait = None
                try:
                    response = self._http.request(method, path, json=body)
                except httpx.TransportError as err:  # connection refused or dropped, timeouts
                    error = ServerError(None, f"{method} {path} failed: {type(err).__name__}: {err}")
                else:
                    self.stats.bytes_sent += len(response.request.content or b"")
                    self.stats.bytes_received += len(response.content)
                    if response.status_code < 400:
                        self.stats.calls += 1
                        return response.json()
                    error = _error(response)
                    if response.status_code < 500:
                        raise error
                    wait = _retry_after(response)
                if attempt == self.retries:
                    raise error
                delay = wait if wait is not None else min(self.max_backoff, self.backoff * 2**attempt)
                delay *= 1 + 0.25 * random.random()  # jitter: clients that failed together retry apart
                logger.warning("%s; retry %d/%d in %.1f s", error, attempt + 1, self.retries, delay)
                self.stats.retries += 1
                attempt += 1
                time.sleep(delay)
        finally:
            self.stats.seconds += time.perf_counter() - started


def _error(response: httpx.Response) -> ServerError:
    try:
        data = response.json()
        return ServerError(response.status_code, data.get("message") or str(data), data.get("field"))
    except ValueError:
        return ServerError(response.status_code, response.text[:200] or response.reason_phrase)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
