"""`kvadvise check` for people and machines: the JSON document, a rich table, and markdown for a PR.

Knows how to turn a check.findings.CheckResult into text. Never parses or computes anything.
Bytes stay integers in JSON; a figure vLLM printed in GiB is converted to the centre of its rounding
interval and its printed text is kept beside it under `printed`.
"""

from __future__ import annotations

from typing import Any, Optional

from kvadvise.check.findings import ByteRange, CheckResult, RankCheck
from kvadvise.check.parser import Size
from kvadvise.report.common import bytes_text, concurrency_text, gib, make_document, tokens_text

COMMAND = "check"
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
FORMULA = ("fit = int(total x gpu_memory_utilization) - (weights + peak activation + non-torch + CUDA graphs) "
           "- 150 MiB; full = free at start - the same - 150 MiB (vLLM 0.10.2 v1/worker/gpu_worker.py)")


def _range_list(span: Optional[ByteRange]) -> Optional[list[int]]:
    return None if span is None else [span.low, span.high]


def _rank_sizes(check: RankCheck) -> list[tuple[str, Optional[Size]]]:
    """Each memory figure the rank printed, by our name; the suggestion line's terms first."""
    rank = check.rank
    line = rank.suggestion
    pick = lambda name: getattr(line, name) if line is not None else None  # noqa: E731
    return [
        ("total", pick("total") or rank.total),
        ("free_at_start", pick("free_at_start")),
        ("requested", pick("requested") or rank.requested),
        ("weights", pick("weights") or rank.weights),
        ("weights_loaded", rank.weights_loaded),
        ("consumed", pick("consumed")),
        ("activation_peak", pick("activation_peak") or rank.activation_peak),
        ("non_torch", pick("non_torch") or rank.non_torch),
        ("cuda_graph", pick("cuda_graph") or rank.cuda_graph_pool or rank.cuda_graph),
        ("cuda_graph_estimate", rank.cuda_graph_estimate),
        ("available_kv", rank.available_kv),
        ("kv_in_use", pick("kv_in_use")),
    ]


def _rank_entry(check: RankCheck) -> dict[str, Any]:
    rank = check.rank
    sizes = _rank_sizes(check)
    utilization = rank.suggestion.gpu_memory_utilization if rank.suggestion else None
    entry: dict[str, Any] = {
        "label": rank.label,
        "kind": rank.kind,
        "tensor_parallel_rank": rank.tensor_parallel_rank,
        "pipeline_parallel_rank": rank.pipeline_parallel_rank,
        "data_parallel_rank": rank.data_parallel_rank,
        "pid": rank.pid,
        "terms_source": check.terms_source,
        "gpu_memory_utilization": utilization if utilization is not None else rank.gpu_memory_utilization,
    }
    for name, size in sizes:
        key = "free_bytes_at_start" if name == "free_at_start" else f"{name}_bytes"
        entry[key] = size.bytes if size is not None else None
    entry.update({
        "load_seconds": rank.load_seconds,
        "graph_capture_seconds": rank.graph_seconds,
        "suggested_fit_bytes": check.suggested_fit_bytes,
        "suggested_full_bytes": check.suggested_full_bytes,
        "recomputed_fit_bytes": check.recomputed_fit_bytes,
        "recomputed_full_bytes": check.recomputed_full_bytes,
        "recomputed_fit_range_bytes": _range_list(check.recomputed_fit),
        "recomputed_full_range_bytes": _range_list(check.recomputed_full),
        "corrected_fit_range_bytes": _range_list(check.corrected_fit),
        "corrected_full_range_bytes": _range_list(check.corrected_full),
        "printed": {name: str(size) for name, size in sizes if size is not None},
    })
    return entry


def check_document(result: CheckResult, inputs: dict[str, Any]) -> dict[str, Any]:
    """The `--json` document (report/schemas/check.json)."""
    startup = result.startup
    config = startup.config
    error = startup.engine_value("max_len_error")
    counts = {severity: sum(1 for f in result.findings if f.severity == severity)
              for severity in ("error", "warning", "info")}
    kv = None
    if result.kv is not None:
        kv = {
            "model": result.kv.model_id,
            "vllm_rules": result.kv.vllm_rules,
            "budget_range_bytes": _range_list(result.kv.budget),
            "max_model_len": result.kv.max_model_len,
            "num_blocks_range": list(result.kv.num_blocks),
            "tokens_range": list(result.kv.tokens),
            "max_concurrency_range": [round(c, 4) for c in result.kv.max_concurrency],
            "logged_blocks": result.kv.logged_blocks,
            "logged_tokens": result.kv.logged_tokens,
            "logged_max_concurrency": result.kv.logged_max_concurrency,
            "agrees": result.kv.agrees,
            "notes": list(result.kv.notes),
        }
    results = {
        "log": {
            "path": result.parse.path,
            "bytes_read": result.parse.bytes_read,
            "lines_read": result.parse.lines_read,
            "startups_found": len(result.parse.startups),
            "checked_startup": startup.index + 1,
            "first_line": startup.first_line,
            "last_line": startup.last_line,
        },
        "vllm": {
            "version": startup.vllm_version,
            "engine": startup.engine_version,
            "rules": result.vllm_rules,
            "model": config.model,
            "tensor_parallel_size": config.tensor_parallel_size,
            "pipeline_parallel_size": config.pipeline_parallel_size,
            "data_parallel_size": config.data_parallel_size,
            "max_model_len": startup.max_model_len,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "kv_cache_dtype": config.kv_cache_dtype,
            "block_size": config.block_size,
            "settings_sources": list(config.sources),
            "suggested_fit_bytes": result.suggested_fit_bytes,
            "suggested_full_bytes": result.suggested_full_bytes,
            "gpu_blocks": startup.engine_value("gpu_blocks"),
            "kv_tokens": startup.engine_value("kv_tokens"),
            "max_concurrency": startup.engine_value("max_concurrency"),
            "max_concurrency_len": startup.engine_value("max_concurrency_len"),
            "max_model_len_error": None if error is None else {
                "max_model_len": error.max_model_len,
                "kv_needed_bytes": error.kv_needed.bytes if error.kv_needed else None,
                "kv_available_bytes": error.kv_available.bytes if error.kv_available else None,
                "estimated_max_model_len": error.estimated_max_model_len,
                "kv_tokens": error.kv_tokens,
            },
        },
        "ranks": [_rank_entry(check) for check in result.ranks],
        "recomputed": {
            "fit_bytes": result.recomputed_fit_bytes,
            "full_bytes": result.recomputed_full_bytes,
            "fit_range_bytes": _range_list(result.recomputed_fit),
            "full_range_bytes": _range_list(result.recomputed_full),
            "bottleneck_rank": result.bottleneck_rank,
            "recommended_kv_cache_memory_bytes": result.recommended_kv_cache_memory_bytes,
            "formula": FORMULA,
        },
        "kv": kv,
        "findings": [{"code": f.code, "severity": f.severity, "message": f.message, "rank": f.rank}
                     for f in result.findings],
        "summary": {"errors": counts["error"], "warnings": counts["warning"], "infos": counts["info"],
                    "exit_code": 4 if counts["error"] else 0},
    }
    return make_document(COMMAND, inputs, results, list(result.notes))


# ------------------------------------------------------------------------------------------------
# people


def _gib_number(value: Optional[int]) -> str:
    """GiB with 2 decimals, no unit (the table says GiB once)."""
    return "—" if value is None else gib(value).removesuffix(" GiB")


def _fit_text(span: Optional[ByteRange], centre: Optional[int]) -> str:
    if span is None:
        return "—"
    return _gib_number(centre if centre is not None else span.middle)


def _term_rows(result: CheckResult) -> list[list[str]]:
    """What each rank printed, in GiB as printed."""
    rows = []
    for check in result.ranks:
        sizes = dict(_rank_sizes(check))
        weights = sizes["weights"] or sizes["consumed"] or sizes["weights_loaded"]
        non_torch = _size_text(sizes["non_torch"])
        if sizes["consumed"] is not None and sizes["non_torch"] is None:
            non_torch = "incl."
        rows.append([check.rank.label, _size_text(weights), _size_text(sizes["activation_peak"]), non_torch,
                     _size_text(sizes["cuda_graph"]), _size_text(sizes["cuda_graph_estimate"]),
                     _size_text(sizes["available_kv"] or sizes["kv_in_use"])])
    return rows


def _budget_rows(result: CheckResult) -> list[list[str]]:
    """vLLM's two suggestions next to ours, in GiB, with a verdict."""
    rows = []
    codes = {}
    for finding in result.findings:
        if finding.rank and finding.code in ("graph_counted_twice", "suggestion_mismatch", "negative_budget"):
            codes.setdefault(finding.rank, []).append(finding.code)
    for check in result.ranks:
        if check.suggested_fit_bytes is None and check.recomputed_fit is None:
            continue
        verdict = ", ".join(VERDICTS[code] for code in codes.get(check.rank.label, [])) or (
            "agrees" if check.suggested_fit_bytes is not None else "recomputed only")
        rows.append([check.rank.label,
                     _gib_number(check.suggested_fit_bytes),
                     _fit_text(check.best_fit, None if check.corrected_fit else check.recomputed_fit_bytes),
                     _gib_number(check.suggested_full_bytes),
                     _fit_text(check.best_full, None if check.corrected_full else check.recomputed_full_bytes),
                     verdict])
    return rows


VERDICTS = {"graph_counted_twice": "graphs twice", "suggestion_mismatch": "mismatch", "negative_budget": "negative"}
TERM_HEADERS = ["rank", "weights", "peak act.", "non-torch", "graphs", "graph est.", "KV budget"]
BUDGET_HEADERS = ["rank", "fit vLLM", "fit ours", "full vLLM", "full ours", "verdict"]


def _byte_lines(result: CheckResult) -> list[str]:
    """Exact bytes per rank (identical ranks once)."""
    lines, seen = [], {}
    for check in result.ranks:
        if check.suggested_fit_bytes is None and check.recomputed_fit is None:
            continue
        text = (f"fit vLLM {bytes_text(check.suggested_fit_bytes)} B, ours {_range_or_dash(check.best_fit)} B; "
                f"full vLLM {bytes_text(check.suggested_full_bytes)} B, ours {_range_or_dash(check.best_full)} B")
        if text in seen:
            seen[text].append(check.rank.label)
            continue
        seen[text] = [check.rank.label]
    for text, labels in seen.items():
        lines.append(f"{', '.join(labels)}: {text}")
    return lines


def _size_text(size: Optional[Size]) -> str:
    """A logged figure as printed (GiB; V0's "GB" figures are GiB), without the unit."""
    if size is None:
        return "—"
    return _gib_number(size.bytes) if size.exact else size.text


def _settings_line(result: CheckResult) -> str:
    startup = result.startup
    config = startup.config
    parts = [f"vLLM {startup.vllm_version}" if startup.vllm_version else "vLLM version not printed",
             f"rules {result.vllm_rules}"]
    if startup.engine_version:
        parts.append(f"{startup.engine_version} engine")
    if config.model:
        parts.append(f"model {config.model}")
    if config.tensor_parallel_size:
        parts.append(f"TP {config.tensor_parallel_size}")
    if config.pipeline_parallel_size and config.pipeline_parallel_size > 1:
        parts.append(f"PP {config.pipeline_parallel_size}")
    if startup.max_model_len:
        parts.append(f"max_model_len {startup.max_model_len:,}")
    if config.gpu_memory_utilization is not None:
        parts.append(f"util {config.gpu_memory_utilization}")
    return ", ".join(parts)


def _engine_line(result: CheckResult) -> Optional[str]:
    startup = result.startup
    blocks, tokens = startup.engine_value("gpu_blocks"), startup.engine_value("kv_tokens")
    concurrency, length = startup.engine_value("max_concurrency"), startup.engine_value("max_concurrency_len")
    parts = []
    if blocks is not None:
        parts.append(f"{blocks:,} GPU blocks")
    if tokens is not None:
        parts.append(f"{tokens:,} tokens")
    if concurrency is not None:
        parts.append(f"{concurrency:.2f}x at {length:,} tokens per request")
    return "vLLM's KV cache: " + ", ".join(parts) if parts else None


def _kv_line(result: CheckResult) -> Optional[str]:
    kv = result.kv
    if kv is None:
        return None
    verdict = "agrees" if kv.agrees else "DISAGREES"
    return (f"{kv.model_id} under vLLM {kv.vllm_rules} rules: {tokens_text(kv.tokens[0])}..{tokens_text(kv.tokens[1])} "
            f"tokens, {kv.num_blocks[0]:,}..{kv.num_blocks[1]:,} blocks, {concurrency_text(kv.max_concurrency[0])}.."
            f"{concurrency_text(kv.max_concurrency[1])} for the logged budget: {verdict} with the log")


def _advice_line(result: CheckResult) -> Optional[str]:
    value = result.recommended_kv_cache_memory_bytes
    if value is None or value <= 0:
        return None
    where = f" (the bottleneck is {result.bottleneck_rank})" if result.bottleneck_rank else ""
    return f"pass --kv-cache-memory-bytes {value} to fit the requested utilization on every rank{where}"


def render_table(result: CheckResult):
    """A callable that prints the report on a rich console."""

    def render(console) -> None:
        from rich.table import Table

        console.print(f"[bold]kvadvise check[/bold] {result.parse.path}: start-up {result.startup.index + 1} of "
                      f"{len(result.parse.startups)} (lines {result.startup.first_line}-{result.startup.last_line})")
        console.print(_settings_line(result), markup=False)
        if result.ranks:
            for title, headers, rows in (
                    ("what each rank printed (GiB)", TERM_HEADERS, _term_rows(result)),
                    ("--kv-cache-memory-bytes suggestions (GiB)", BUDGET_HEADERS, _budget_rows(result))):
                if not rows:
                    continue
                table = Table(show_header=True, header_style="bold", title=title, title_justify="left")
                for header in headers:
                    left = header in ("rank", "verdict")
                    table.add_column(header, justify="left" if left else "right", no_wrap=header == "rank")
                for row in rows:
                    table.add_row(*row)
                console.print(table)
            for line in _byte_lines(result):
                console.print(f"  {line}", markup=False)
        for line in (_engine_line(result), _kv_line(result), _advice_line(result)):
            if line:
                console.print(line, markup=False)
        if result.findings:
            console.print("[bold]findings[/bold]")
            for finding in result.findings:
                style = SEVERITY_STYLE[finding.severity]
                console.print(f"  [{style}]{finding.severity:<7}[/{style}] {finding.code}: ", end="")
                console.print(finding.message, markup=False)
        else:
            console.print("no findings: vLLM's figures agree with the recomputation")

    return render


def _range_or_dash(span: Optional[ByteRange]) -> str:
    return "—" if span is None else f"{span.low:,}..{span.high:,}"


def render_markdown(result: CheckResult) -> str:
    """The report as markdown, to paste into an issue or a pull request."""
    lines = [f"### kvadvise check: `{result.parse.path}`", "",
             f"Start-up {result.startup.index + 1} of {len(result.parse.startups)} (lines "
             f"{result.startup.first_line}-{result.startup.last_line}); {_settings_line(result)}.", ""]
    for title, headers, rows in (("What each rank printed (GiB)", TERM_HEADERS, _term_rows(result)),
                                 ("`--kv-cache-memory-bytes` suggestions (GiB)", BUDGET_HEADERS,
                                  _budget_rows(result))):
        if not rows:
            continue
        lines += [f"{title}:", "", "| " + " | ".join(headers) + " |",
                  "|" + "|".join(":--" if h in ("rank", "verdict") else "--:" for h in headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    for line in _byte_lines(result):
        lines.append(f"- {line}")
    for line in (_engine_line(result), _kv_line(result), _advice_line(result)):
        if line:
            lines.append(f"- {line}")
    for note in result.notes:
        lines.append(f"- note: {note}")
    lines.append("")
    if result.findings:
        lines.append("| severity | code | finding |")
        lines.append("|:--|:--|:--|")
        for finding in result.findings:
            lines.append(f"| {finding.severity} | `{finding.code}` | {finding.message.replace('|', chr(92) + '|')} |")
    else:
        lines.append("No findings: vLLM's figures agree with the recomputation.")
    return "\n".join(lines) + "\n"
