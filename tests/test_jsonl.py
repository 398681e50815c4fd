"""hnjax.data.jsonl: the one JSON-lines reader, with errors naming file and line."""

import pytest

from hnjax.data import jsonl
from hnjax.train import metrics as metrics_lib


def test_records_skip_blank_lines_and_number_from_one(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n', encoding="utf-8")
    assert list(jsonl.records(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_records_name_file_and_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not valid JSON"):
        list(jsonl.records(path))
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(KeyError, match=r"b\.jsonl:2: expected a JSON object, got list"):
        list(jsonl.records(path, error=KeyError))


def test_partial_last_line_is_tolerated_only_when_asked_and_only_when_unterminated(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste', encoding="utf-8")  # a killed writer's last line
    assert [r["step"] for _, r in jsonl.records(path, partial_last_line=True)] == [1, 2]
    assert metrics_lib.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
    with pytest.raises(ValueError, match=r"c\.jsonl:3"):
        list(jsonl.records(path))
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n', encoding="utf-8")  # a bad line in the middle still raises
    with pytest.raises(ValueError, match=r"c\.jsonl:2"):
        list(jsonl.records(path, partial_last_line=True))
    assert metrics_lib.read_jsonl(str(tmp_path / "missing.jsonl")) == []
