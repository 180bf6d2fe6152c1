"""Rows of an xlsx spreadsheet, for the one test that reads one (CHIP-CTC's ``category.xlsx``, the source of its
label words). No task's data is a spreadsheet, so this reader, and ``openpyxl``, belong to the tests alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl


def read_xlsx(path: str | Path, *, sheet: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Spreadsheet rows as dicts keyed by the first row, with their 1-based row numbers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = (book[sheet] if sheet else book.worksheets[0]).iter_rows(values_only=True)
        names = [str(v).strip() if v is not None else "" for v in next(rows, ())]
        for number, values in enumerate(rows, start=2):
            if any(v is not None for v in values):
                yield number, dict(zip(names, values, strict=False))
    finally:
        book.close()
