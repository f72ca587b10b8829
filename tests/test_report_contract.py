"""The JSON contract's machinery: the envelope, atomic writes, the schema validator itself."""

import json
import os
from pathlib import Path

import pytest

from kvadvise.report.common import make_document, write_json_atomic
from kvadvise.report.schema import validate


def test_envelope_validates():
    document = make_document("capacity", {"model": "x"}, {"kv_cache": {}}, ["careful"])
    assert list(document)[:4] == ["schema_version", "kvadvise_version", "command", "inputs"]
    assert document["warnings"] == ["careful"]
    assert validate(document, {"$ref": "common.json#/$defs/envelope"}, file_name="common.json") == []


def test_validator_finds_problems():
    schema = {"type": "object", "required": ["a", "b"], "additionalProperties": False,
              "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": ["string", "null"]},
                             "c": {"type": "array", "items": {"enum": [1, 2]}}}}
    assert validate({"a": 1, "b": None}, schema) == []
    problems = validate({"a": -1, "c": [1, 3], "d": True}, schema)
    assert "$: missing required key 'b'" in problems
    assert "$.a: -1 below minimum 0" in problems
    assert "$.c[1]: 3 not one of [1, 2]" in problems
    assert "$: unexpected key 'd'" in problems
    assert validate({"a": True, "b": "x"}, schema) == ["$.a: expected integer, got bool"]


def test_write_json_atomic(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(target.parent) == ["report.json"]


def test_write_json_atomic_gives_the_mode_open_would(tmp_path):
    """mkstemp's 0600 must not survive the rename: a new report is 0666 less the umask, a replaced one keeps
    its mode."""
    target = tmp_path / "report.json"
    old = os.umask(0o022)
    try:
        write_json_atomic(target, {"a": 1})
        assert target.stat().st_mode & 0o777 == 0o644
        os.chmod(target, 0o640)
        write_json_atomic(target, {"a": 2})
        assert target.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_write_json_atomic_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"a": float("nan")})  # allow_nan=False: refused before the rename
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["report.json"]


def test_write_json_atomic_does_not_invent_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_json_atomic(tmp_path / "typo" / "report.json", {"a": 1})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["missing-folder/report.json", "."])
def test_unwritable_output_is_bad_input(tmp_path, where):
    from typer.testing import CliRunner

    from kvadvise.cli import app

    config = Path(__file__).parent / "data" / "configs" / "meta-llama__Llama-3.1-8B.json"
    target = tmp_path / where
    result = CliRunner().invoke(app, ["capacity", str(config), "--kv-cache-memory-bytes", "40GiB",
                                      "--output", str(target)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --output {target}: cannot write the report")
    assert "Traceback" not in result.output


def test_strict_validation_finds_undeclared_keys():
    schema = {"allOf": [{"$ref": "common.json#/$defs/envelope"},
                        {"type": "object", "properties": {"result": {"type": "object", "properties": {"a": {}}},
                                                          "table": {"type": "object",
                                                                    "additionalProperties": {"type": "integer"}}}}]}
    document = make_document("x", {}, {"result": {"a": 1, "b": 2}, "table": {"any": 1}, "extra": True})
    assert validate(document, schema, file_name="common.json") == []
    assert sorted(validate(document, schema, file_name="common.json", strict=True)) == [
        "$.result: key 'b' is not in the schema", "$: key 'extra' is not in the schema"]
