"""The typer application. Each command lives in kvadvise/commands/ and registers itself here."""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # newer typer vendors its own click; older ones use click itself
    from typer import _click as _click_module
except ImportError:  # pragma: no cover - depends on the installed typer
    import click as _click_module

_exceptions = _click_module.exceptions
# click >= 8.2 raises NoArgsIsHelpError for a command given no arguments; older click shows help itself
_NoArgsIsHelp = getattr(_exceptions, "NoArgsIsHelpError", ())

from kvadvise import __version__
from kvadvise.commands._common import STATE

class _OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad option value) as one `error:` line and a `hint:`, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as error:  # `kvadvise` alone: its help, on stdout
            sys.stdout.write(error.ctx.get_help() + "\n")
            sys.exit(0)
        except _exceptions.ClickException as error:
            message = " ".join(error.format_message().split())
            sys.stderr.write(f"error: {message}\n")
            context = getattr(error, "ctx", None)
            path = context.command_path if context is not None else "kvadvise"
            sys.stderr.write(f"hint: see '{path} --help'\n")
            sys.exit(error.exit_code)
        except _exceptions.Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
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
