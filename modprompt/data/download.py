"""The raw-data manifest and a verifying downloader for it.

``manifest.json`` (package data, generated from the data ``SOURCES.json`` by :func:`build_manifest`)
pins every raw file to a repository commit and a sha256. :func:`fetch` fills a data root laid out as
``OWNER+NAME/<path>`` from a local mirror or over HTTP(S); a file only ever appears in the data root
after its size and sha256 have been checked, so a failed or corrupt transfer can never leave a file
that a loader would then read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import httpx
from tqdm import tqdm

from modprompt.checksum import file_sha256

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
_CHUNK = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: First retry waits this long, then twice as long each time (a module constant so tests can shorten it).
RETRY_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 30.0


class FetchError(Exception):
    """One file could not be obtained or did not match the manifest; the message says which and why."""


@dataclass
class FetchReport:
    """What :func:`fetch` did; every list holds local names (``OWNER+NAME/<path>``)."""

    fetched: list[str] = field(default_factory=list)  # downloaded over HTTP(S)
    copied: list[str] = field(default_factory=list)  # copied from the mirror
    verified: list[str] = field(default_factory=list)  # already present with the right sha256
    failed: list[tuple[str, str]] = field(default_factory=list)  # (local name, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


def default_data_root() -> Path:
    """``$MODPROMPT_DATA`` if set, else ``modprompt/data`` under the XDG cache folder (``~/.cache``)."""
    env = os.environ.get("MODPROMPT_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(cache) if cache and Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "modprompt" / "data"


def local_name(repo: str, path: str) -> str:
    """Where a repository file lives under a data root: ``OWNER+NAME/<path>``."""
    return f"{repo.replace('/', '+')}/{path}"


def build_manifest(sources_json: Path) -> dict:
    """Build the manifest from a ``SOURCES.json`` (a list of ``{repo, commit, path, sha256, bytes}``)."""
    sources = json.loads(Path(sources_json).read_text(encoding="utf-8"))
    if not isinstance(sources, list):
        raise ValueError(f"{sources_json}: expected a JSON list of files, got {type(sources).__name__}")
    files = []
    for i, src in enumerate(sources):
        missing = {"repo", "commit", "path", "sha256", "bytes"} - set(src)
        if missing:
            raise ValueError(f"{sources_json}: entry {i} lacks {sorted(missing)}")
        if src["repo"].count("/") != 1:
            raise ValueError(f"{sources_json}: entry {i}: repo {src['repo']!r} is not OWNER/NAME")
        files.append(
            {
                "local": local_name(src["repo"], src["path"]),
                "repo": src["repo"],
                "commit": src["commit"],
                "path": src["path"],
                "sha256": src["sha256"],
                "bytes": src["bytes"],
                "url": f"https://raw.githubusercontent.com/{src['repo']}/{src['commit']}/"
                + quote(src["path"], safe="/"),
            }
        )
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    _check_manifest(manifest, origin=str(sources_json))
    return manifest


def write_manifest(manifest: dict, path: Path) -> None:
    """Write a manifest in the committed layout (so regenerating it gives a minimal diff)."""
    Path(path).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def load_manifest() -> dict:
    """The manifest shipped with modprompt."""
    text = resources.files("modprompt.data").joinpath("manifest.json").read_text(encoding="utf-8")
    manifest = json.loads(text)
    _check_manifest(manifest, origin="modprompt/data/manifest.json")
    return manifest


def _check_manifest(manifest: dict, origin: str) -> None:
    # Local names become filesystem paths under dest, so refuse anything that could escape it.
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{origin}: unsupported manifest format {manifest.get('format')!r}")
    seen: set[str] = set()
    for entry in manifest["files"]:
        name = entry.get("local", "")
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{origin}: unsafe local name {name!r}")
        if name in seen:
            raise ValueError(f"{origin}: duplicate local name {name!r}")
        seen.add(name)
        if not _SHA256.fullmatch(str(entry.get("sha256", ""))):
            raise ValueError(f"{origin}: {name}: bad sha256 {entry.get('sha256')!r}")
        if not isinstance(entry.get("bytes"), int) or entry["bytes"] < 0:
            raise ValueError(f"{origin}: {name}: bad size {entry.get('bytes')!r}")


def _select(manifest: dict, only: list[str] | None) -> list[dict]:
    """Entries named in ``only`` (a local name or a folder of them); every name must match something."""
    files = manifest["files"]
    if only is None:
        return list(files)
    wanted = [o.strip("/") for o in only]
    unmatched = [
        o for o in wanted if not any(e["local"] == o or e["local"].startswith(o + "/") for e in files)
    ]
    if unmatched:
        raise ValueError(f"not in the manifest: {', '.join(unmatched)}")
    return [e for e in files if any(e["local"] == o or e["local"].startswith(o + "/") for o in wanted)]


def _problem(entry: dict, target: Path) -> str | None:
    """Why ``target`` is not the manifest's file, or None if it is."""
    if not target.is_file():
        return "missing"
    if target.stat().st_size != entry["bytes"]:
        return f"size {target.stat().st_size} bytes, expected {entry['bytes']}"
    actual = file_sha256(target)
    if actual != entry["sha256"]:
        return f"sha256 {actual}, expected {entry['sha256']}"
    return None


def verify(
    dest: Path, *, manifest: dict | None = None, only: list[str] | None = None
) -> list[tuple[str, str]]:
    """Check the manifest files (or those in ``only``) under ``dest``; ``(local name, problem)`` pairs."""
    manifest = load_manifest() if manifest is None else manifest
    problems = []
    for entry in _select(manifest, only):
        problem = _problem(entry, Path(dest) / entry["local"])
        if problem:
            problems.append((entry["local"], problem))
    return problems


def _write_verified(
    entry: dict, target: Path, chunks: Iterable[bytes], source: str, progress: Callable[[int], None]
) -> None:
    """Stream ``chunks`` into a temp file next to ``target``; rename it over ``target`` only if it matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress(len(chunk))
        actual = digest.hexdigest()
        if actual != entry["sha256"] or size != entry["bytes"]:
            raise FetchError(
                f"{entry['local']}: checksum mismatch from {source}: expected sha256 {entry['sha256']} "
                f"({entry['bytes']} bytes), got sha256 {actual} ({size} bytes)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _download(
    client: httpx.Client, url: str, entry: dict, target: Path, retries: int, progress: Callable[[int], None]
) -> None:
    """GET ``url`` into ``target``, retrying connection errors, timeouts and 5xx with exponential backoff."""
    for attempt in range(retries + 1):
        sent = 0

        def counted(n: int) -> None:
            nonlocal sent
            sent += n
            progress(n)

        try:
            with client.stream("GET", url) as response:
                if response.status_code == 404:
                    raise FetchError(f"{entry['local']}: not found (HTTP 404) at {url}")
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()
                    _write_verified(entry, target, response.iter_bytes(_CHUNK), url, counted)
                    return
                reason = f"HTTP {response.status_code}"
        except httpx.HTTPStatusError as exc:
            raise FetchError(f"{entry['local']}: HTTP {exc.response.status_code} at {url}") from exc
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        progress(-sent)  # the retry starts the file over
        if attempt == retries:
            raise FetchError(f"{entry['local']}: {reason} at {url} (gave up after {retries + 1} attempts)")
        delay = min(RETRY_BACKOFF_S * 2**attempt, _MAX_BACKOFF_S)
        logger.warning("%s: %s at %s; retrying in %.1fs", entry["local"], reason, url, delay)
        time.sleep(delay)


def fetch(
    dest: Path,
    *,
    mirror: Path | None = None,
    base_url: str | None = None,
    manifest: dict | None = None,
    only: list[str] | None = None,
    workers: int = 4,
    timeout: float = 60,
    retries: int = 3,
    progress: bool | None = None,
) -> FetchReport:
    """Make ``dest`` hold every manifest file (or those named in ``only``) with the right sha256.

    Files already present and correct are left alone. Others are copied from ``mirror`` (a folder laid out
    ``OWNER+NAME/<path>``) or downloaded: from each file's pinned GitHub URL, or from
    ``base_url + '/OWNER+NAME/<path>'`` when ``base_url`` is given. ``only`` takes local names or folders
    of them (``"CLUEbenchmark+FewCLUE/datasets/eprstmt"``). ``progress`` shows a bar; None means only on
    a terminal. A file that fails is listed in ``FetchReport.failed`` and the others still proceed.
    """
    if mirror is not None and base_url is not None:
        raise ValueError("give either mirror or base_url, not both")
    manifest = load_manifest() if manifest is None else manifest
    entries = _select(manifest, only)
    dest = Path(dest)
    report = FetchReport()
    lock = threading.Lock()

    todo = []
    for entry in entries:
        problem = _problem(entry, dest / entry["local"])
        if problem is None:
            report.verified.append(entry["local"])
        else:
            if problem != "missing":
                logger.warning("%s: present but %s; replacing it", entry["local"], problem)
            todo.append(entry)
    logger.info("%d of %d files already present and verified", len(report.verified), len(entries))
    if not todo:
        return report

    show = sys.stderr.isatty() if progress is None else progress
    total = sum(e["bytes"] for e in todo)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="modprompt data", disable=not show)

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    client = None if mirror is not None else httpx.Client(timeout=timeout, follow_redirects=True)

    def one(entry: dict) -> None:
        name, target = entry["local"], dest / entry["local"]
        try:
            if mirror is not None:
                source = Path(mirror) / name
                if not source.is_file():
                    raise FetchError(f"{name}: not in the mirror {mirror}")
                _write_verified(entry, target, _file_chunks(source), str(source), advance)
                done = report.copied
            else:
                url = f"{base_url.rstrip('/')}/{quote(name, safe='/+')}" if base_url else entry["url"]
                _download(client, url, entry, target, retries, advance)
                done = report.fetched
        except (FetchError, OSError) as exc:
            logger.error("%s", exc)
            with lock:
                report.failed.append((name, str(exc)))
            return
        with lock:
            done.append(name)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, todo))
    finally:
        bar.close()
        if client is not None:
            client.close()
    # Workers finish in any order; report in manifest order so runs are comparable.
    order = {e["local"]: i for i, e in enumerate(entries)}
    for done in (report.fetched, report.copied):
        done.sort(key=order.__getitem__)
    report.failed.sort(key=lambda item: order[item[0]])
    logger.info(
        "data in %s: %d fetched, %d copied, %d verified, %d failed",
        dest, len(report.fetched), len(report.copied), len(report.verified), len(report.failed),
    )
    return report
