"""What every command shares: error-to-exit-code mapping, --json/--output handling, CI gates."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from kvadvise.errors import GateFailed, KvadviseError

# Set by the root callback (`kvadvise --debug ...`) or the KVADVISE_DEBUG environment variable.
STATE: dict[str, bool] = {"debug": False}

# Shared option declarations, so every command spells them the same way.
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout (see docs/json.md).")
OutputOption = typer.Option(None, "--output", "-o", help="Also write the JSON document to FILE (atomically).",
                            metavar="FILE")
MinTokensOption = typer.Option(None, "--min-tokens", help="CI gate: exit 4 when the KV tokens fall below N.",
                               metavar="N")
MinConcurrencyOption = typer.Option(None, "--min-concurrency",
                                    help="CI gate: exit 4 when max concurrency falls below X.", metavar="X")


def parse_positive_int(text: Optional[str], what: str) -> Optional[int]:
    """An option read as text that must be a positive whole number (None stays None; `1_000` is allowed)."""
    from kvadvise.errors import InputError

    if text is None:
        return None
    value = str(text).strip().replace("_", "")
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"{what} must be a positive whole number, got {text!r}")
    return int(value)


def vllm_version_callback(value: Optional[str]) -> Optional[str]:
    """typer callback: `--vllm-version v0.11.0` means the 0.11 rules (None stays None)."""
    if value is None:
        return None
    from kvadvise.plan.kv import normalize_vllm_version

    return normalize_vllm_version(value)


def debug_enabled() -> bool:
    return STATE["debug"] or os.environ.get("KVADVISE_DEBUG", "") not in ("", "0")


@dataclass
class Outcome:
    """What a command body hands back: the JSON document, how to render it for people, gate values."""

    document: dict[str, Any]
    render: Callable[[Any], None]
    tokens: Optional[int] = None
    concurrency: Optional[float] = None
    # An error to report AFTER the report is printed (e.g. "does not fit": the report still prints, exit 2).
    error: Optional[KvadviseError] = None
    extra_gate_failures: list[str] = field(default_factory=list)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console():
    """Rich console for the report; piped output gets 140 columns so wide tables keep their figures."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "140"))
    return Console(highlight=False, width=width)


def print_error(error: KvadviseError) -> None:
    """One `error:` line on stderr, and an optional `hint:` line. Plain text: no markup surprises."""
    message = " ".join(str(error.message).split())
    sys.stderr.write(f"error: {message}\n")
    if error.hint:
        sys.stderr.write(f"hint: {' '.join(str(error.hint).split())}\n")
    sys.stderr.flush()


def gate_failures(outcome: Outcome, min_tokens: Optional[int], min_concurrency: Optional[float]) -> list[str]:
    """Evaluate the CI gates; record each in the document under `gates`."""
    failures: list[str] = list(outcome.extra_gate_failures)
    gates = []
    if min_tokens is not None:
        passed = outcome.tokens is not None and outcome.tokens >= min_tokens
        gates.append({"name": "min_tokens", "threshold": min_tokens, "value": outcome.tokens, "passed": passed})
        if not passed:
            failures.append(f"KV tokens {outcome.tokens if outcome.tokens is not None else 'unknown'} "
                            f"below --min-tokens {min_tokens}")
    if min_concurrency is not None:
        passed = outcome.concurrency is not None and outcome.concurrency >= min_concurrency
        gates.append({"name": "min_concurrency", "threshold": min_concurrency,
                      "value": outcome.concurrency, "passed": passed})
        if not passed:
            shown = "unknown" if outcome.concurrency is None else f"{outcome.concurrency:.2f}x"
            failures.append(f"max concurrency {shown} below --min-concurrency {min_concurrency}")
    if gates:
        outcome.document["gates"] = gates
    return failures


def execute(body: Callable[[], Outcome], *, json_mode: bool = False, output: Optional[Path] = None,
            min_tokens: Optional[int] = None, min_concurrency: Optional[float] = None) -> None:
    """Run a command body and turn its outcome or error into output and an exit code."""
    from kvadvise.report.common import dumps, write_json_atomic

    try:
        if min_tokens is not None and min_tokens < 0:
            from kvadvise.errors import InputError

            raise InputError(f"--min-tokens must be >= 0, got {min_tokens}")
        if min_concurrency is not None and not (0 <= min_concurrency < float("inf")):  # NaN fails too
            from kvadvise.errors import InputError

            raise InputError(f"--min-concurrency must be a finite number >= 0, got {min_concurrency}")
        outcome = body()
        failures = gate_failures(outcome, min_tokens, min_concurrency)
        if output is not None:
            try:
                write_json_atomic(output, outcome.document)
            except OSError as error:
                from kvadvise.errors import InputError

                reason = error.strerror or type(error).__name__
                raise InputError(f"--output {output}: cannot write the report: {reason}",
                                 hint="name a file in an existing, writable folder") from error
        if json_mode:
            sys.stdout.write(dumps(outcome.document))
            sys.stdout.flush()
        else:
            outcome.render(stdout_console())
            sys.stdout.flush()
        # Warnings are for people, on stderr in both modes (renderers never print them).
        for warning in outcome.document.get("warnings", []):
            sys.stderr.write(f"warning: {' '.join(str(warning).split())}\n")
        sys.stderr.flush()
        if outcome.error is not None:
            raise outcome.error
        if failures:
            raise GateFailed("CI gate failed: " + "; ".join(failures))
    except KvadviseError as error:
        if debug_enabled():
            traceback.print_exc(file=sys.stderr)
        print_error(error)
        raise typer.Exit(error.exit_code)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise typer.Exit(130)
    except Exception as error:  # a bug: one line unless --debug
        if debug_enabled():
            traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(error).__name__}: {error}".split())
        sys.stderr.write(f"error: internal error: {message}\n")
        sys.stderr.write("hint: rerun with --debug for the traceback, and report it\n")
        raise typer.Exit(1)


def print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
