"""Every command's --json document names only keys its schema documents (strict validation).

The per-command CLI tests validate their documents too; this file is the one place that checks the
schemas cover everything each command emits, so docs/json.md cannot silently fall behind the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.report.schema import validate

DATA = Path(__file__).parent / "data"
CONFIGS = DATA / "configs"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.tiny_models import save_tiny_checkpoint

    directory, _ = save_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny-llama-schemas"))
    return str(directory)


def _cases(tiny: str):
    small = ["--max-num-batched-tokens", "64", "--max-num-seqs", "8"]
    return {
        "capacity": ["capacity", str(CONFIGS / "google__gemma-3-4b-it.json"), "--kv-cache-memory-bytes", "8GiB",
                     "--min-tokens", "1"],
        "profile": ["profile", tiny, "--device", "cpu", "--load-format", "auto", "--gpu", "L4", *small],
        "estimate": ["estimate", tiny, "--gpu", "H100", *small, "--min-concurrency", "1"],
        "pp_split": ["pp-split", str(CONFIGS / "Qwen__Qwen3-8B.json"), "--partition", "20,16",
                     "--gpu-memory", "24GiB", "--parameter-counts"],
        "check": ["check", str(DATA / "logs" / "case04.log")],
        "gpus": ["gpus"],
    }


@pytest.mark.parametrize("command", ["capacity", "profile", "estimate", "pp_split", "check", "gpus"])
def test_every_key_is_documented(command, tiny_llama):
    argv = _cases(tiny_llama)[command] + ["--json"]
    result = runner.invoke(app, argv)
    assert result.exit_code in (0, 4), result.output
    document = json.loads(result.stdout)
    assert validate(document, command, strict=True) == []
