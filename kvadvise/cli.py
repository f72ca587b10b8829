"""The typer application. Each command lives in kvadvise/commands/ and registers itself here."""

from __future__ import annotations

import importlib

import typer

from kvadvise import __version__
from kvadvise.commands._common import STATE

app = typer.Typer(
    name="kvadvise",
    help="GPU-memory profiler and KV-cache budget advisor for vLLM: the exact --kv-cache-memory-bytes "
         "for your card, without booting vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Command modules, in the order `kvadvise --help` lists them. Each has `register(app)`.
COMMAND_MODULES = ("profile", "estimate", "capacity", "pp_split", "check", "gpus")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kvadvise {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """kvadvise: size vLLM's KV cache exactly."""
    STATE["debug"] = debug


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"kvadvise.commands.{_name}")
    except ModuleNotFoundError as _missing:  # a command not built yet
        if _missing.name != f"kvadvise.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app(prog_name="kvadvise")


if __name__ == "__main__":
    main()
