"""Raw-file readers: every format, errors that name file and line, lenient mode."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pytest
from spreadsheet import read_xlsx

from modprompt.data.convert import NLI, option_converter
from modprompt.data.readers import (
    DataError,
    convert_records,
    read_blocks,
    read_delimited,
    read_json,
    read_json_records,
    read_jsonl,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_reads_records_with_line_numbers_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"x": 1}\n\n{"x": 2}\r\n')
    assert list(read_jsonl(path)) == [(1, {"x": 1}), (3, {"x": 2})]


def test_jsonl_broken_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.jsonl", '{"x": 1}\n{"x": 2\n{"x": 3}\n')
    with pytest.raises(DataError) as err:
        list(read_jsonl(path))
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "invalid JSON" in str(err.value)
    assert err.value.where == 2


def test_jsonl_non_object_line_is_an_error(tmp_path):
    path = write(tmp_path, "list.jsonl", '{"x": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object, got list"):
        list(read_jsonl(path))


def test_lenient_mode_skips_bad_lines_and_logs_the_count(tmp_path, caplog):
    path = write(tmp_path, "bad.jsonl", '{"x": 1}\nnot json\n{"x": 3}\n{oops\n')
    with caplog.at_level(logging.WARNING):
        rows = list(read_jsonl(path, lenient=True))
    assert rows == [(1, {"x": 1}), (3, {"x": 3})]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and str(path) in warning[0] and "skipped 2" in warning[0] and "line 2" in warning[0]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nowhere.jsonl"):
        list(read_jsonl(tmp_path / "nowhere.jsonl"))


def test_non_utf8_text_names_the_line(tmp_path):
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"a\t1\n" + "caf\xe9\t0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.tsv, line 2: not UTF-8"):
        list(read_delimited(path))


def test_whole_json_list_names_the_record_index(tmp_path):
    path = write(tmp_path, "list.json", '[{"a": 1}, {"a": 2}, 3]')
    with pytest.raises(DataError, match=r"list.json, record 2: expected a JSON object, got int"):
        list(read_json_records(path))
    assert list(read_json_records(path, lenient=True)) == [(0, {"a": 1}), (1, {"a": 2})]
    with pytest.raises(DataError, match=r"record 0"):  # a bad record in a whole-JSON file is counted from 0
        list(read_json_records(write(tmp_path, "first.json", "[1]")))


def test_whole_json_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "bad.json", '[\n {"a": 1},\n {"a" 2}\n]')
    with pytest.raises(DataError, match=r"bad.json, line 3: invalid JSON"):
        read_json(path)


def test_tsv_without_header_by_field_names_and_wrong_field_count(tmp_path):
    path = write(tmp_path, "pairs.txt", "甲\t乙\t1\r\n\n丙\t丁\n戊\t己\t0\n")
    with pytest.raises(DataError, match=r"pairs.txt, line 3: expected 3 fields separated by '\\t', got 2"):
        list(read_delimited(path, fieldnames=("a", "b", "label")))
    rows = list(read_delimited(path, fieldnames=("a", "b", "label"), lenient=True))
    assert rows == [(1, {"a": "甲", "b": "乙", "label": "1"}), (4, {"a": "戊", "b": "己", "label": "0"})]


def test_tsv_keeps_quote_characters_inside_texts(tmp_path):
    path = write(tmp_path, "q.tsv", 'label\ttext_a\n1\t他说"好\n0\t"引号"开头\n')
    assert [r for _, r in read_delimited(path, header=True)] == [
        {"label": "1", "text_a": '他说"好'},
        {"label": "0", "text_a": '"引号"开头'},
    ]


def test_csv_with_header_quoted_fields_and_multiline_records(tmp_path):
    text = 'label,review\n1,"很好,""推荐"""\n0,"第一行\n第二行"\n1,还行\n'
    rows = list(read_delimited(write(tmp_path, "r.csv", text), delimiter=",", header=True))
    assert rows == [
        (2, {"label": "1", "review": '很好,"推荐"'}),
        (3, {"label": "0", "review": "第一行\n第二行"}),
        (5, {"label": "1", "review": "还行"}),
    ]


def test_empty_file_with_header_expected(tmp_path):
    with pytest.raises(DataError, match="no header row"):
        list(read_delimited(write(tmp_path, "empty.tsv", "\n"), header=True))


def test_zip_member(tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inner.csv", "\ufeffcat,label,review\n书籍,1,好书\n书籍,1,2\n".encode())
    rows = list(read_delimited(path, delimiter=",", header=True, member="inner.csv"))
    assert rows[0] == (2, {"cat": "书籍", "label": "1", "review": "好书"})  # the BOM is not part of the header
    with pytest.raises(DataError, match=r"zip has no member 'other.csv'"):
        list(read_delimited(path, delimiter=",", header=True, member="other.csv"))


def test_zip_member_errors_name_the_member(tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inner.tsv", "a\tb\nonly-one\n")
    with pytest.raises(DataError, match=r"data.zip\[inner.tsv\], line 2"):
        list(read_delimited(path, fieldnames=("a", "b"), member="inner.tsv"))


def test_blank_line_separated_blocks(tmp_path):
    path = write(tmp_path, "blocks.txt", "a\tb\n\n\nc\td\ne\n\nf\n")
    assert list(read_blocks(path)) == [(1, ["a\tb"]), (4, ["c\td", "e"]), (7, ["f"])]


def test_xlsx_rows_keyed_by_header(data_root):
    rows = list(read_xlsx(data_root / "Sherlock-coder+CBLUE/data/CHIP-CTC/category.xlsx"))
    assert len(rows) == 44
    assert rows[0][0] == 2 and rows[0][1]["Label Name"] == "Disease" and rows[0][1]["Chinese Label Name"] == "疾病"


def _nli(tmp_path: Path, text: str) -> tuple[Path, object]:
    path = write(tmp_path, "nli.jsonl", text)
    return path, option_converter("t", "q", NLI, path, "nli.jsonl", ("s1", "s2"), "label")


def test_unknown_label_names_file_line_and_label(tmp_path):
    path, convert = _nli(
        tmp_path, '{"s1": "a", "s2": "b", "label": "neutral"}\n{"s1": "a", "s2": "c", "label": "maybe"}\n'
    )
    with pytest.raises(DataError) as err:
        convert_records(path, read_jsonl(path), convert)
    message = str(err.value)
    assert str(path) in message and "line 2" in message and "unknown label 'maybe'" in message


def test_missing_field_names_the_field(tmp_path):
    path, convert = _nli(tmp_path, '{"s1": "a", "label": "neutral"}\n')
    with pytest.raises(DataError, match=r"nli.jsonl, line 1: missing field 's2'"):
        convert_records(path, read_jsonl(path), convert)


def test_lenient_conversion_skips_and_logs(tmp_path, caplog):
    path, convert = _nli(
        tmp_path,
        '{"s1": "a", "s2": "b", "label": "neutral"}\n{"s1": "a", "s2": "c", "label": "maybe"}\n'
        '{"s1": 3, "s2": "c", "label": "neutral"}\n{"s1": "x", "s2": "y", "label": "contradiction"}\n',
    )
    with caplog.at_level(logging.WARNING):
        examples = convert_records(path, read_jsonl(path), convert, lenient=True)
    assert [e.answer_text for e in examples] == ["中立", "矛盾"]
    assert [e.source for e in examples] == ["nli.jsonl:1", "nli.jsonl:4"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "skipped 2" in warning[0] and str(path) in warning[0] and "'maybe'" in warning[0]
