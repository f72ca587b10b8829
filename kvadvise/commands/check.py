"""`kvadvise check vllm.log`: parse a vLLM start-up log, recompute its budgets, report its accounting faults.

Exit 0 when no finding is an error, 4 when one is (a CI gate), 2 when the file is missing, unreadable or
holds no vLLM start-up lines. Pure text work: no torch, no transformers on this path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kvadvise.commands._common import JsonOption, Outcome, OutputOption, execute, vllm_version_callback

FORMATS = ("table", "json", "markdown")


def check(
    log: str = typer.Argument(..., metavar="LOG", help="A vLLM start-up log (vllm serve / LLM(...) output)."),
    model: Optional[str] = typer.Option(
        None, "--model", metavar="MODEL",
        help="Recompute KV tokens from this model's config (hub id in the local cache, directory or JSON file). "
             "Default: the model the log names, when it resolves locally."),
    vllm_version: Optional[str] = typer.Option(
        None, "--vllm-version", metavar="V", callback=vllm_version_callback,
        help="vLLM rules to apply (0.10.2, 0.11, 0.12, 0.33). Default: from the version the log prints."),
    startup: Optional[int] = typer.Option(
        None, "--startup", metavar="N", help="Which start-up to check when the log holds several (1 = first; "
                                             "default the last)."),
    output_format: str = typer.Option("table", "--format", metavar="FORMAT",
                                      help="table (default), json, or markdown (to paste into a pull request)."),
    json_mode: bool = JsonOption,
    output: Optional[Path] = OutputOption,
) -> None:
    """Check a vLLM start-up log: recompute its --kv-cache-memory suggestion and name accounting faults."""

    def body() -> Outcome:
        from kvadvise.check.findings import check_startup
        from kvadvise.check.parser import parse_log
        from kvadvise.errors import GateFailed, InputError, KvadviseError
        from kvadvise.report.check import check_document, render_markdown, render_table

        if output_format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
        if vllm_version is not None:
            from kvadvise.plan.kv import vllm_rules

            vllm_rules(vllm_version)  # InputError for a version we do not mirror
        if startup is not None and startup < 1:
            raise InputError(f"--startup counts from 1, got {startup}")
        parse = parse_log(log)
        if not parse.startups:
            raise InputError(f"{log}: no vLLM start-up lines found ({parse.lines_read:,} lines read)",
                             hint="pass the log of `vllm serve` (or LLM(...)) from start-up to the first request")
        index = -1 if startup is None else startup - 1
        if index >= len(parse.startups):
            raise InputError(f"{log} holds {len(parse.startups)} start-up(s); there is no start-up {startup}")
        spec, spec_note = None, None
        if model is not None:
            from kvadvise.model.spec import load_model_spec

            spec = load_model_spec(model)
        else:
            named = parse.startups[index].config.model
            if named:
                from kvadvise.model.spec import load_model_spec

                try:
                    spec = load_model_spec(named)
                except KvadviseError:
                    spec_note = (f"the model the log names ({named}) does not resolve locally: KV tokens not "
                                 f"recomputed (pass --model)")
        result = check_startup(parse, spec=spec, vllm_version=vllm_version, startup_index=index)
        if spec_note:
            from dataclasses import replace

            result = replace(result, notes=result.notes + (spec_note,))
        inputs = {"log": log, "model": model, "vllm_version": vllm_version, "startup": startup,
                  "format": "json" if json_mode else output_format}
        document = check_document(result, inputs)
        if output_format == "markdown" and not json_mode:
            text = render_markdown(result)
            render = lambda console: console.file.write(text)  # noqa: E731  plain text, no rich markup
        else:
            render = render_table(result)
        error = None
        if result.has_errors:
            codes = sorted({f.code for f in result.findings if f.severity == "error"})
            error = GateFailed(f"the log shows {document['summary']['errors']} error finding(s): {', '.join(codes)}")
        return Outcome(document=document, render=render, error=error)

    execute(body, json_mode=json_mode or output_format == "json", output=output)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
