"""The CLI skeleton: every command has --help, --help imports neither torch nor transformers, exit codes."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app

COMMANDS = ["profile", "estimate", "capacity", "pp-split", "check", "gpus"]
runner = CliRunner()


def test_root_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output or command == "gpus"


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_does_not_import_torch(argv):
    code = ("import sys; sys.argv = ['kvadvise'] + %r\n"
            "from kvadvise.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules]\n"
            "sys.stderr.write('HEAVY=' + ','.join(heavy))\n") % (argv,)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY=" in done.stderr, done.stderr
    assert done.stderr.rsplit("HEAVY=", 1)[1].strip() == ""


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("kvadvise ")


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "kvadvise", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("kvadvise ")


def test_no_arguments_prints_help():
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert "Usage: kvadvise" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["no-such-command"], "error: No such command 'no-such-command'."),
    (["capacity", "model.json", "--bogus"], "error: No such option: --bogus"),
    (["capacity"], "error: Missing argument 'model'."),
    (["profile", "model.json", "--util", "abc"], "error: Invalid value for '--util'"),
    (["estimate", "model.json", "--max-num-seqs", "many"], "error: Invalid value for '--max-num-seqs'"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(message)
    assert lines[1].startswith("hint: see 'kvadvise")
    assert "Traceback" not in result.output


def test_human_mode_warnings_go_to_stderr():
    from pathlib import Path

    # gemma-3's sliding-window layers make kvadvise assume vLLM's default --max-num-batched-tokens: a warning
    config = Path(__file__).parent / "data" / "configs" / "google__gemma-3-4b-it.json"
    human = runner.invoke(app, ["capacity", str(config), "--kv-cache-memory-bytes", "8GiB"])
    as_json = runner.invoke(app, ["capacity", str(config), "--kv-cache-memory-bytes", "8GiB", "--json"])
    assert human.exit_code == as_json.exit_code == 0, human.output
    warnings = json.loads(as_json.stdout)["warnings"]
    assert warnings
    for warning in warnings:
        assert f"warning: {warning}" in human.stderr
        assert warning not in human.stdout
