"""The manifest and the verifying downloader, against the real mirror served over loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from modprompt.data import download
from modprompt.data.download import build_manifest, default_data_root, fetch, load_manifest, verify, write_manifest

# A handful of small files from five repositories (82 to 4965 bytes), in manifest order.
SUBSET = [
    "CLUEbenchmark+FewCLUE/datasets/eprstmt/train_0.json",
    "thunlp+Chinese_NRE/data/SanWen/relation2id.txt",
    "dbiir+UER-py/datasets/smp2020-ewect/usual/labels.json",
    "zejunwang1+bertorch/data/tnews/labels.txt",
    "649453932+Chinese-Text-Classification-Pytorch/THUCNews/data/class.txt",
]
CORRUPT = "thunlp+Chinese_NRE/data/SanWen/relation2id.txt"


class MirrorServer:
    """Serves a mirror folder at ``/OWNER+NAME/<path>``; can corrupt, hide or fail paths, counts requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.override: dict[str, bytes] = {}  # path -> bytes served instead of the file
        self.status: dict[str, list[int]] = {}  # path -> statuses to answer before serving normally
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = unquote(self.path.lstrip("/"))
                server.requests[path] += 1
                pending = server.status.get(path)
                if pending:
                    self.send_error(pending.pop(0))
                    return
                file = server.root / path
                if path in server.override:
                    body = server.override[path]
                elif file.is_file():
                    body = file.read_bytes()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(data_root: Path):
    srv = MirrorServer(data_root)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.01)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.rglob("*.part"))


def test_manifest_matches_sources(data_root: Path, tmp_path: Path) -> None:
    # SOURCES.json sits next to the mirror (shared/data/SOURCES.json beside shared/data/raw).
    sources_json = data_root.parent / "SOURCES.json"
    sources = json.loads(sources_json.read_text(encoding="utf-8"))
    manifest = load_manifest()
    assert len(manifest["files"]) == len(sources) == 185
    assert {(e["repo"], e["path"], e["commit"], e["sha256"], e["bytes"]) for e in manifest["files"]} == {
        (s["repo"], s["path"], s["commit"], s["sha256"], s["bytes"]) for s in sources
    }
    # The committed file is byte for byte what the generator writes, so it can be regenerated without drift.
    write_manifest(build_manifest(sources_json), tmp_path / "manifest.json")
    packaged = Path(download.__file__).parent / "manifest.json"
    assert (tmp_path / "manifest.json").read_bytes() == packaged.read_bytes()
    first = manifest["files"][0]
    assert first["local"] == "CLUEbenchmark+FewCLUE/datasets/eprstmt/train_0.json"
    assert first["url"] == (
        "https://raw.githubusercontent.com/CLUEbenchmark/FewCLUE/"
        "62a02c6f31cf32814cfe522f78ef088228840f8d/datasets/eprstmt/train_0.json"
    )


def test_build_manifest_quotes_paths_and_rejects_unsafe_ones(tmp_path: Path) -> None:
    entry = {"repo": "a/b", "commit": "c0", "path": "d ir/数据.json", "sha256": "0" * 64, "bytes": 3}
    (tmp_path / "ok.json").write_text(json.dumps([entry]), encoding="utf-8")
    (only,) = build_manifest(tmp_path / "ok.json")["files"]
    assert only["local"] == "a+b/d ir/数据.json"
    assert only["url"] == "https://raw.githubusercontent.com/a/b/c0/d%20ir/%E6%95%B0%E6%8D%AE.json"
    (tmp_path / "bad.json").write_text(json.dumps([{**entry, "path": "../../etc/x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="unsafe local name 'a\\+b/../../etc/x'"):
        build_manifest(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(json.dumps([entry, entry]), encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate local name 'a\\+b/d ir/数据.json'"):
        build_manifest(tmp_path / "dup.json")


def test_every_manifest_file_is_in_the_mirror_with_its_sha256(data_root: Path) -> None:
    assert verify(data_root) == []


def test_verify_names_missing_and_wrong_files(tmp_path: Path, data_root: Path) -> None:
    (tmp_path / SUBSET[0]).parent.mkdir(parents=True)
    shutil.copy(data_root / SUBSET[0], tmp_path / SUBSET[0])
    bad = tmp_path / SUBSET[3]
    bad.parent.mkdir(parents=True)
    bad.write_bytes((data_root / SUBSET[3]).read_bytes()[:-1] + b"!")
    problems = dict(verify(tmp_path, only=SUBSET))
    assert SUBSET[0] not in problems
    assert problems[SUBSET[1]] == "missing"
    assert problems[SUBSET[3]] == (
        f"sha256 {sha256(bad)}, expected f68157dfa11ae7e643e02161466d15fc25e90d6a60ced33db0acbf6452f9e798"
    )
    assert len(problems) == 4


def test_fetch_over_http_then_second_run_makes_no_request(
    tmp_path: Path, server: MirrorServer, data_root: Path
) -> None:
    report = fetch(tmp_path, base_url=server.url, only=SUBSET, progress=False)
    assert report.ok
    assert report.fetched == SUBSET  # manifest order, whichever worker finished first
    assert report.copied == report.verified == []
    assert sum(server.requests.values()) == 5
    for name in SUBSET:
        assert (tmp_path / name).read_bytes() == (data_root / name).read_bytes()
    assert leftovers(tmp_path) == []

    again = fetch(tmp_path, base_url=server.url, only=SUBSET, progress=False)
    assert again.ok and again.verified == SUBSET and again.fetched == []
    assert sum(server.requests.values()) == 5


def test_only_accepts_a_folder_and_rejects_unknown_names(tmp_path: Path, server: MirrorServer) -> None:
    folder = "CLUEbenchmark+FewCLUE/datasets/eprstmt"
    report = fetch(tmp_path, base_url=server.url, only=[folder], progress=False)
    assert len(report.fetched) == 13  # train_0..4, dev_0..4, train/dev_few_all, test_public
    with pytest.raises(ValueError, match="not in the manifest: CLUEbenchmark\\+FewCLUE/datasets/eprst$"):
        fetch(tmp_path, base_url=server.url, only=["CLUEbenchmark+FewCLUE/datasets/eprst"])


def test_corrupt_download_is_reported_and_not_kept(tmp_path: Path, server: MirrorServer) -> None:
    server.override[CORRUPT] = b"0\tunknown\n"
    report = fetch(tmp_path, base_url=server.url, only=SUBSET, progress=False)
    assert not report.ok
    assert report.fetched == [n for n in SUBSET if n != CORRUPT]
    ((name, reason),) = report.failed
    assert name == CORRUPT
    assert CORRUPT in reason
    expected = "7e9e0208eec6ab4bc37bc6760b096c38d8f96daf2a7d5ae0aa01b4f103b0d3e3"
    assert f"expected sha256 {expected} (113 bytes)" in reason
    assert f"got sha256 {hashlib.sha256(server.override[CORRUPT]).hexdigest()} (10 bytes)" in reason
    assert not (tmp_path / CORRUPT).exists()
    assert leftovers(tmp_path) == []
    assert server.requests[CORRUPT] == 1  # a checksum mismatch is not retried


def test_failed_refetch_leaves_the_existing_file_alone(tmp_path: Path, server: MirrorServer) -> None:
    stale = tmp_path / CORRUPT
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older version\n")
    server.override[CORRUPT] = b"garbage"
    report = fetch(tmp_path, base_url=server.url, only=[CORRUPT], progress=False)
    assert [n for n, _ in report.failed] == [CORRUPT]
    assert stale.read_bytes() == b"an older version\n"
    assert leftovers(tmp_path) == []


def test_404_is_an_immediate_error_naming_the_url(tmp_path: Path, server: MirrorServer) -> None:
    server.status[SUBSET[0]] = [404]
    report = fetch(tmp_path, base_url=server.url, only=[SUBSET[0]], progress=False)
    assert report.failed == [(SUBSET[0], f"{SUBSET[0]}: not found (HTTP 404) at {server.url}/{SUBSET[0]}")]
    assert server.requests[SUBSET[0]] == 1


def test_500_once_is_retried(tmp_path: Path, server: MirrorServer, data_root: Path) -> None:
    server.status[SUBSET[1]] = [500]
    report = fetch(tmp_path, base_url=server.url, only=SUBSET, progress=False)
    assert report.ok and report.fetched == SUBSET
    assert server.requests[SUBSET[1]] == 2
    assert sha256(tmp_path / SUBSET[1]) == sha256(data_root / SUBSET[1])


def test_persistent_500_gives_up_after_the_retries(tmp_path: Path, server: MirrorServer) -> None:
    server.status[SUBSET[1]] = [503] * 10
    report = fetch(tmp_path, base_url=server.url, only=[SUBSET[1]], retries=2, progress=False)
    ((name, reason),) = report.failed
    assert name == SUBSET[1]
    assert reason == f"{SUBSET[1]}: HTTP 503 at {server.url}/{SUBSET[1]} (gave up after 3 attempts)"
    assert server.requests[SUBSET[1]] == 3


def test_connection_refused_is_retried_then_reported(tmp_path: Path, server: MirrorServer) -> None:
    url = server.url
    server.close()  # nothing listens on that port any more
    report = fetch(tmp_path, base_url=url, only=[SUBSET[2]], retries=1, progress=False)
    ((name, reason),) = report.failed
    assert name == SUBSET[2]
    assert reason.startswith(f"{SUBSET[2]}: ConnectError")
    assert reason.endswith("(gave up after 2 attempts)")


def test_mirror_mode_copies_then_verifies(tmp_path: Path, data_root: Path) -> None:
    report = fetch(tmp_path, mirror=data_root, only=SUBSET, progress=False)
    assert report.ok and report.copied == SUBSET and report.fetched == []
    assert verify(tmp_path, only=SUBSET) == []
    again = fetch(tmp_path, mirror=data_root, only=SUBSET, progress=False)
    assert again.verified == SUBSET and again.copied == []


def test_corrupt_or_missing_mirror_file_is_reported(tmp_path: Path, data_root: Path) -> None:
    mirror = tmp_path / "mirror"
    for name in SUBSET[:3]:
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / name, mirror / name)
    (mirror / CORRUPT).write_bytes(b"tampered")
    dest = tmp_path / "dest"
    report = fetch(dest, mirror=mirror, only=SUBSET, progress=False)
    assert report.copied == [SUBSET[0], SUBSET[2]]
    failed = dict(report.failed)
    assert set(failed) == {CORRUPT, SUBSET[3], SUBSET[4]}
    assert f"got sha256 {hashlib.sha256(b'tampered').hexdigest()} (8 bytes)" in failed[CORRUPT]
    assert failed[SUBSET[3]] == f"{SUBSET[3]}: not in the mirror {mirror}"
    assert not (dest / CORRUPT).exists()
    assert leftovers(dest) == []


def test_mirror_and_base_url_are_exclusive(tmp_path: Path, data_root: Path) -> None:
    with pytest.raises(ValueError, match="either mirror or base_url"):
        fetch(tmp_path, mirror=data_root, base_url="http://127.0.0.1:1")


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODPROMPT_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"
    monkeypatch.delenv("MODPROMPT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == tmp_path / "cache" / "modprompt" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # invalid per the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_root() == tmp_path / ".cache" / "modprompt" / "data"
