"""sha256 of a file's content: how modprompt names a bank, a pre-finetuned model or a data file by what it holds."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks (weights files do not fit in memory twice)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
