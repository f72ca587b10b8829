"""The budget report that `profile` and `estimate` share: a table and a JSON document from a BudgetReport.

Knows how to show the four non-KV terms (GiB, bytes, and how each was obtained), a bar of how the card is
spent, the two suggested `--kv-cache-memory-bytes` values with the tokens and concurrency they buy, and the
`vllm serve` lines. Never measures or computes a budget: the numbers come from plan/advice.py via
profile/session.py or estimate/. JSON contract: report/schemas/profile.json (estimate.json refers to it).
"""

from __future__ import annotations

from typing import Any, Optional

from kvadvise.report.common import bytes_text, concurrency_text, gib, make_document, tokens_text

TERMS = (("weights", "weights"), ("activation_peak", "peak activation"), ("non_torch", "non-torch memory"),
         ("cuda_graph", "CUDA graphs"))
_COLORS = {"weights": "blue", "activation_peak": "magenta", "non_torch": "yellow", "cuda_graph": "cyan",
           "buffer": "red", "kv": "green", "headroom": "bright_black", "occupied": "white"}
# one letter per part of the bar, so it reads without colour too
_GLYPHS = {"occupied": "x", "weights": "W", "activation_peak": "A", "non_torch": "N", "cuda_graph": "G",
           "buffer": "B", "kv": "K", "headroom": "."}
_LEGEND = (("occupied", "in use at start"), ("weights", "weights"), ("activation_peak", "activation"),
           ("non_torch", "non-torch"), ("cuda_graph", "CUDA graphs"), ("buffer", "150 MiB buffer"),
           ("kv", "KV cache (fit)"), ("headroom", "left over"))


# ------------------------------------------------------------------ JSON -----------------------------------

def device_block(device: Any, *, kind: Optional[str] = None) -> Optional[dict[str, Any]]:
    if device is None:
        return None
    return {
        "name": device.name,
        "kind": kind,
        "source": device.source,
        "total_bytes": device.total_bytes,
        "free_bytes_at_start": device.free_bytes_at_start,
        "driver_version": device.driver_version,
        "mig_mode": device.mig_mode,
        "other_processes_bytes": device.other_processes_bytes,
    }


def memory_block(memory: Any, weight_buffers: Any = None) -> dict[str, Any]:
    """The four terms and their methods; `memory` is a NonKvMemory or anything with the same attributes
    (None values allowed: a partial profile). weight_buffers (kvadvise.plan.vllm_buffers.VllmWeightBuffers,
    else `memory.weight_buffers` when it has one): the part of weights_bytes that is vLLM's own buffers,
    shown as a sub-line; null when not known (a run stopped before loading)."""
    block: dict[str, Any] = {}
    for term, _ in TERMS:
        block[f"{term}_bytes"] = getattr(memory, f"{term}_bytes")
        block[f"{term}_method"] = getattr(memory, f"{term}_method")
    values = [block[f"{term}_bytes"] for term, _ in TERMS]
    block["non_kv_bytes"] = None if None in values else sum(values)
    buffers = weight_buffers if weight_buffers is not None else getattr(memory, "weight_buffers", None)
    block["weights_vllm_buffers_bytes"] = None if buffers is None else buffers.total_bytes
    block["weights_vllm_buffers_method"] = None if buffers is None else buffers.method
    block["weights_vllm_buffers"] = None if buffers is None else buffers.detail()
    runner = getattr(memory, "non_torch_vllm_buffers", None) or getattr(memory, "non_torch_buffers", None)
    block["non_torch_vllm_buffers_bytes"] = None if not runner else sum(runner.values())
    block["non_torch_vllm_buffers"] = None if not runner else dict(runner)
    return block


def option_block(option: Any) -> dict[str, Any]:
    return {
        "kv_cache_memory_bytes": option.kv_cache_memory_bytes,
        "tokens": option.tokens,
        "max_concurrency": option.max_concurrency,
        "num_blocks": option.num_blocks,
        "command": option.command,
    }


def kv_cache_block(layout: Any, available_bytes: int) -> dict[str, Any]:
    """The `kv_cache` block (kv_cache.json#/$defs/kv_cache, built by the capacity report) for the budget
    that is advised first: the "fit" value (0 when nothing fits)."""
    from kvadvise.plan.kv import kv_capacity
    from kvadvise.report.capacity import kv_cache_json

    return kv_cache_json(layout, kv_capacity(layout, max(0, available_bytes)))


def snapshot_block(snapshot: Any) -> Optional[dict[str, Any]]:
    if snapshot is None:
        return None
    return {"free_bytes": snapshot.free_bytes, "total_bytes": snapshot.total_bytes,
            "reserved_bytes": snapshot.reserved_bytes, "allocated_bytes": snapshot.allocated_bytes,
            "peak_allocated_bytes": snapshot.peak_allocated_bytes}


def phases_block(phases: Any) -> list[dict[str, Any]]:
    """profile's phases, each with its snapshots (so a reader can redo the arithmetic) and details."""
    return [{"name": phase.name, "result_bytes": phase.result_bytes, "before": snapshot_block(phase.before),
             "after": snapshot_block(phase.after), "detail": dict(phase.detail)} for phase in phases]


def budget_document(report: Any, *, layout: Any, inputs: Optional[dict[str, Any]] = None,
                    extra: Optional[dict[str, Any]] = None, status: Optional[str] = None,
                    weight_buffers: Any = None) -> dict[str, Any]:
    """The JSON document of a BudgetReport (profile and estimate): device, settings, memory, advice, kv_cache.

    `extra` adds command-specific blocks (profile: `measurement`); `status` defaults to "ok", or
    "does_not_fit" when the fit value is <= 0.
    """
    advice = report.advice
    settings = dict(report.settings)
    utilization = settings.pop("gpu_memory_utilization", None)
    results: dict[str, Any] = {
        "model": report.model_id,
        "status": status or ("ok" if advice.fit_kv_cache_memory_bytes > 0 else "does_not_fit"),
        "device": device_block(report.device, kind=settings.pop("device_kind", None)),
        "settings": {"max_num_batched_tokens": report.max_num_batched_tokens,
                     "max_num_seqs": report.max_num_seqs,
                     "gpu_memory_utilization": utilization, **settings},
        "memory": memory_block(report.memory, weight_buffers),
        "advice": {
            "vllm_version": advice.vllm_version,
            "requested_bytes": advice.requested_bytes,
            "non_kv_bytes": advice.non_kv_bytes,
            "redundancy_buffer_bytes": advice.redundancy_buffer_bytes,
            "fit": option_block(report.fit),
            "full": option_block(report.full),
            "gpu_memory_utilization_for_gate": advice.gate_gpu_memory_utilization,
        },
        "kv_cache": kv_cache_block(layout, advice.fit_kv_cache_memory_bytes),
    }
    results.update(extra or {})
    return make_document(report.command, inputs or {}, results, report.warnings)


def partial_document(command: str, *, inputs: dict[str, Any], model_id: str, device: Any, memory: Any,
                     settings: dict[str, Any], max_num_batched_tokens: Optional[int], max_num_seqs: Optional[int],
                     status: str, layout: Any, extra: Optional[dict[str, Any]] = None,
                     warnings: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The document of a run that stopped early (out of device memory): what was measured, advice null."""
    settings = dict(settings)
    utilization = settings.pop("gpu_memory_utilization", None)
    results: dict[str, Any] = {
        "model": model_id,
        "status": status,
        "device": device_block(device, kind=settings.pop("device_kind", None)),
        "settings": {"max_num_batched_tokens": max_num_batched_tokens, "max_num_seqs": max_num_seqs,
                     "gpu_memory_utilization": utilization, **settings},
        "memory": memory_block(memory),
        "advice": None,
        "kv_cache": kv_cache_block(layout, 0),
    }
    results.update(extra or {})
    return make_document(command, inputs, results, warnings)


# ------------------------------------------------------------------ for people -----------------------------

def _bar(document: dict[str, Any], width: int = 60) -> Any:
    """One line of blocks: how the card's total memory is spent under the 'fit' value."""
    from rich.text import Text

    device, memory, advice = document["device"], document["memory"], document["advice"]
    total = device["total_bytes"]
    parts: list[tuple[str, int]] = [(term, memory[f"{term}_bytes"] or 0) for term, _ in TERMS]
    occupied = total - device["free_bytes_at_start"]
    if advice is not None:
        parts.append(("buffer", advice["redundancy_buffer_bytes"]))
        parts.append(("kv", max(0, advice["fit"]["kv_cache_memory_bytes"])))
    used = occupied + sum(max(0, size) for _, size in parts)
    parts = [("occupied", occupied)] + parts + [("headroom", max(0, total - used))]
    text = Text()
    cells_left = width
    for index, (name, size) in enumerate(parts):
        cells = round(width * max(0, size) / total) if total else 0
        cells = min(cells, cells_left) if index < len(parts) - 1 else cells_left
        cells_left -= cells
        text.append(_GLYPHS[name] * cells, style=_COLORS[name])
    return text


def render_budget(document: dict[str, Any], console: Any) -> None:
    """The human report: header, breakdown table, bar, the two values, the commands (warnings: stderr)."""
    from rich.table import Table
    from rich.text import Text

    device, memory, advice, settings = (document["device"], document["memory"], document["advice"],
                                        document["settings"])
    command = document["command"]
    methods = {memory.get(f"{term}_method") for term, _ in TERMS}
    verb = "estimated" if command != "profile" else (
        "measured" if methods <= {"measured", "not_applicable"} else "measured and estimated")
    where = device["name"] or f"a {gib(device['total_bytes'])} device"
    measured_on = (document.get("measurement") or {}).get("device_measured")
    source = device["source"] + (f", measured on {measured_on}" if measured_on == "cpu" else "")
    console.print(Text(f"kvadvise {command}: {document['model']} on {where} ({source})", style="bold"))
    utilization = settings.get("gpu_memory_utilization")
    header = (f"total {gib(device['total_bytes'])} ({bytes_text(device['total_bytes'])} B), free at start "
              f"{gib(device['free_bytes_at_start'])}")
    if advice is not None and utilization is not None:
        header += f", --util {utilization} requests {gib(advice['requested_bytes'])}"
    console.print(header)
    inputs = document.get("inputs") or {}
    given = [inputs.get("max_num_batched_tokens") is not None, inputs.get("max_num_seqs") is not None]
    origin = "as given" if all(given) else (f"vLLM {settings.get('vllm_version')}'s default for this device"
                                            if not any(given) else "partly vLLM's default for this device")
    console.print(f"profile batch: --max-num-batched-tokens {settings['max_num_batched_tokens']}, --max-num-seqs "
                  f"{settings['max_num_seqs']} ({origin})")
    measurement = document.get("measurement") or {}
    if measurement.get("shape_equivalent"):
        console.print(Text("note: " + measurement["shape_equivalent"], style="yellow"))

    table = Table(title=f"Non-KV memory ({verb} terms)", show_lines=False)
    table.add_column("term")
    table.add_column("GiB", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("method")
    for term, label in TERMS:
        table.add_row(Text(_GLYPHS[term] + " ", style=_COLORS[term]) + Text(label), gib(memory[f"{term}_bytes"]),
                      bytes_text(memory[f"{term}_bytes"]), memory[f"{term}_method"].replace("_", " "))
        if term == "weights" and memory.get("weights_vllm_buffers_bytes") is not None:
            parts = ", ".join(memory.get("weights_vllm_buffers") or {}) or "none for this model"
            table.add_row(Text(f"    incl. vLLM-only buffers ({parts})", style="dim"),
                          gib(memory["weights_vllm_buffers_bytes"]), bytes_text(memory["weights_vllm_buffers_bytes"]),
                          memory["weights_vllm_buffers_method"])
        if term == "non_torch" and memory.get("non_torch_vllm_buffers_bytes"):
            table.add_row(Text("    incl. vLLM's Model Runner V2 state (sampler, requests, inputs)", style="dim"),
                          gib(memory["non_torch_vllm_buffers_bytes"]),
                          bytes_text(memory["non_torch_vllm_buffers_bytes"]), "computed")
    table.add_row(Text("  non-KV total", style="bold"), gib(memory["non_kv_bytes"]), bytes_text(memory["non_kv_bytes"]),
                  "")
    if advice is not None:
        table.add_row(Text(_GLYPHS["buffer"] + " ", style=_COLORS["buffer"]) + Text("vLLM's profiling buffer"),
                      gib(advice["redundancy_buffer_bytes"]), bytes_text(advice["redundancy_buffer_bytes"]),
                      "fixed (150 MiB)")
    console.print(table)
    if advice is None:
        return
    console.print("how the card is spent (each cell 1/60 of the total):")
    console.print(Text("[") + _bar(document) + Text("]"))
    legend = Text()
    for name, label in _LEGEND:
        legend.append(_GLYPHS[name], style=_COLORS[name])
        legend.append(f" {label}  ")
    console.print(legend)

    values = Table(title=f"--kv-cache-memory-bytes (vLLM {advice['vllm_version']} suggestion-line formula)")
    values.add_column("value")
    values.add_column("bytes", justify="right")
    values.add_column("GiB", justify="right")
    values.add_column("KV tokens", justify="right")
    max_len = settings.get("max_model_len")
    values.add_column(f"max concurrency @ {max_len if max_len is not None else '?'} tokens", justify="right")
    util_text = f"--util {utilization}" if utilization is not None else "the requested utilization"
    for key, label in (("fit", f"fit {util_text}"), ("full", "full: all free memory")):
        option = advice[key]
        style = None if option["kv_cache_memory_bytes"] > 0 else "red"
        values.add_row(Text(label, style=style), bytes_text(option["kv_cache_memory_bytes"]),
                       gib(option["kv_cache_memory_bytes"]), tokens_text(option["tokens"]),
                       concurrency_text(option["max_concurrency"]))
    console.print(values)
    gate = advice["gpu_memory_utilization_for_gate"]
    if gate is not None:
        console.print(f"vLLM's start-up gate (free >= total x util) passes up to --gpu-memory-utilization {gate:.2f}")
    for key, label in (("fit", "fit"), ("full", "full")):
        line = advice[key]["command"]
        if line:
            console.print(Text(f"{label}: ", style="bold") + Text(line, style="green"), soft_wrap=True)
    # the warnings go to stderr, printed once by commands/_common.execute
