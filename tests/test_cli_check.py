"""`kvadvise check`: the JSON contract, table and markdown, exit codes 0 / 2 / 4, bad input, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.report.schema import validate

LOGS = Path(__file__).parent / "data" / "logs"
CONFIGS = Path(__file__).parent / "data" / "configs"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["check", *args])


def run_json(*args: str, exit_code: int = 0) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == exit_code, result.output
    document = json.loads(result.stdout)
    assert validate(document, "check") == [], validate(document, "check")
    return document


def test_json_clean_log_exits_0():
    document = run_json(str(LOGS / "qwen3-235b-tp4.log"))
    assert document["command"] == "check"
    assert [rank["label"] for rank in document["ranks"]] == ["Worker_TP0", "Worker_TP1", "Worker_TP2", "Worker_TP3"]
    assert document["vllm"]["suggested_fit_bytes"] == 29407858586
    assert document["vllm"]["suggested_full_bytes"] == 38581581312
    low, high = document["recomputed"]["fit_range_bytes"]
    assert low <= 29407858586 <= high and low <= document["recomputed"]["fit_bytes"] <= high
    low, high = document["recomputed"]["full_range_bytes"]
    assert low <= 38581581312 <= high
    assert document["findings"] == [] and document["summary"]["exit_code"] == 0
    assert document["vllm"]["tensor_parallel_size"] == 4 and document["vllm"]["max_model_len"] == 32768
    rank = document["ranks"][0]
    assert rank["printed"]["consumed"] == "56.89 GiB" and rank["consumed_bytes"] == round(56.89 * 2**30)
    assert rank["weights_loaded_bytes"] == round(55.19 * 2**30)


def test_json_error_finding_exits_4_and_still_prints_the_document():
    result = run(str(LOGS / "gb300-decode-graph-estimate.log"), "--json")
    assert result.exit_code == 4
    document = json.loads(result.stdout)
    assert validate(document, "check") == []
    assert {(f["code"], f["severity"]) for f in document["findings"]} == {
        ("graph_counted_twice", "error"), ("graph_estimate_off", "warning")}
    assert document["summary"] == {"errors": 1, "warnings": 1, "infos": 0, "exit_code": 4}
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.output


def test_suggested_full_is_null_when_absent():
    document = run_json(str(LOGS / "case01.log"))
    assert document["vllm"]["suggested_fit_bytes"] is None and document["vllm"]["suggested_full_bytes"] is None
    assert document["recomputed"]["fit_bytes"] is not None and document["recomputed"]["full_bytes"] is None


@pytest.mark.parametrize("name", sorted(p.name for p in LOGS.glob("*.log")))
def test_every_log_validates(name):
    result = run(str(LOGS / name), "--json")
    assert result.exit_code in (0, 4), result.output
    document = json.loads(result.stdout)
    assert validate(document, "check") == []
    assert document["summary"]["exit_code"] == result.exit_code


def test_table_and_markdown():
    table = run(str(LOGS / "glm53-tp3-ranks.log"))
    assert table.exit_code == 4
    assert "Worker_TP1_EP1" in table.stdout and "rank_budgets_differ" in table.stdout
    assert "graphs twice" in table.stdout
    markdown = run(str(LOGS / "glm53-tp3-ranks.log"), "--format", "markdown")
    assert markdown.exit_code == 4
    assert "| rank | weights |" in markdown.stdout and "| error | `graph_counted_twice` |" in markdown.stdout
    assert "\x1b[" not in markdown.stdout
    as_json = run(str(LOGS / "glm53-tp3-ranks.log"), "--format", "json")
    assert json.loads(as_json.stdout)["findings"]


def test_output_file(tmp_path):
    target = tmp_path / "report.json"
    result = run(str(LOGS / "case04.log"), "--output", str(target))
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    assert validate(document, "check") == []
    assert document["vllm"]["suggested_fit_bytes"] == 45175492096
    assert document["vllm"]["suggested_full_bytes"] == 59540753920


def test_model_option_recomputes_tokens():
    document = run_json(str(LOGS / "case04.log"), "--model", str(CONFIGS / "Qwen__Qwen3-Next-80B-A3B-Thinking.json"))
    kv = document["kv"]
    assert kv["agrees"] is True and kv["logged_tokens"] == 973760
    assert kv["tokens_range"][0] <= 973760 <= kv["tokens_range"][1]


def test_startup_option():
    first = run_json(str(LOGS / "case07.log"), "--startup", "1")
    assert first["vllm"]["gpu_blocks"] == 4739 and first["log"]["checked_startup"] == 1
    last = run_json(str(LOGS / "case07.log"))
    assert last["vllm"]["gpu_blocks"] == 5266 and last["log"]["startups_found"] == 2


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02\xff" * 5000, b"hello\nno vllm here\n"])
def test_no_startup_lines_exit_2(tmp_path, content):
    path = tmp_path / "x.log"
    path.write_bytes(content)
    result = run(str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "no vLLM start-up lines" in result.stderr
    assert "Traceback" not in result.output


def test_missing_unreadable_and_directory(tmp_path):
    missing = run(str(tmp_path / "nope.log"))
    assert missing.exit_code == 2 and missing.stderr.startswith("error: log file not found")
    directory = run(str(tmp_path))
    assert directory.exit_code == 2 and "directory" in directory.stderr
    locked = tmp_path / "locked.log"
    locked.write_text((LOGS / "case04.log").read_text())
    locked.chmod(0)
    try:
        result = run(str(locked))
        readable = locked.open("rb").close() is None
    except PermissionError:
        readable = False
    finally:
        locked.chmod(0o644)
    if not readable:  # root reads anything; elsewhere an unreadable file is bad input
        assert result.exit_code == 2 and "permission denied" in result.stderr


@pytest.mark.parametrize("args", [["--format", "yaml"], ["--vllm-version", "0.9"], ["--startup", "0"],
                                  ["--startup", "3"], ["--model", "/no/such/model"]])
def test_bad_options_exit_2(args):
    result = run(str(LOGS / "case07.log"), *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")


def test_check_does_not_import_torch():
    code = ("import sys; sys.argv = ['kvadvise', 'check', %r, '--json']\n"
            "from kvadvise.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('HEAVY=' + ','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
            ) % str(LOGS / "case04.log")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.rsplit("HEAVY=", 1)[1].strip() == ""
    assert json.loads(done.stdout)["vllm"]["suggested_fit_bytes"] == 45175492096
