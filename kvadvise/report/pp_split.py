"""The pp-split report: its JSON (schemas/pp_split.json, docs/json/pp_split.md) and its tables.

Knows how to show a PpPlan; computes nothing itself.
"""

from __future__ import annotations

from typing import Any, Callable

from kvadvise.plan.pp import EngineCapacity, PpPlan, StageShortfall
from kvadvise.report.common import bytes_text, concurrency_text, gib, tokens_text


def _capacity(capacity: EngineCapacity) -> dict[str, Any]:
    return {"kv_cache_memory_bytes": capacity.kv_cache_memory_bytes, "num_blocks": capacity.num_blocks,
            "tokens": capacity.tokens, "max_concurrency": capacity.max_concurrency,
            "fits_one_request": capacity.fits_one_request,
            "largest_fitting_model_len": capacity.largest_fitting_model_len}


def shortfall_text(shortfall: StageShortfall) -> str:
    """One stage's shortfall for people: which stage, what overflows, by how much."""
    stage, fit = shortfall.stage, shortfall.fit_kv_cache_memory_bytes
    if not shortfall.non_kv_fits:
        text = (f"stage {stage}: its non-KV memory alone exceeds the requested memory (less vLLM's 150 MiB "
                f"buffer) by {gib(-fit)}")
        if shortfall.kv_cache_bytes > 0:
            text += f"; with its {gib(shortfall.kv_cache_bytes)} of KV cache, {gib(shortfall.over_bytes)} over"
        return text
    return (f"stage {stage}: its share of the budget, {gib(shortfall.kv_cache_bytes)} of KV cache, exceeds the "
            f"{gib(fit)} that fit by {gib(shortfall.over_bytes)}")


def infeasible_text(plan: PpPlan) -> str:
    """The one error line of a plan that does not fit its cards."""
    return "the partition does not fit its cards: " + "; ".join(shortfall_text(s) for s in plan.shortfalls)


def pp_split_json(plan: PpPlan, non_kv_way: str) -> dict[str, Any]:
    """The results part of the pp-split document (the envelope comes from make_document)."""
    stages = []
    for stage in plan.stages:
        stages.append({
            "index": stage.index,
            "first_layer": stage.first_layer,
            "last_layer": stage.first_layer + stage.layers - 1,
            "layers": stage.layers,
            "card": stage.card_name,
            "total_bytes": stage.total_bytes,
            "gpu_memory_utilization": stage.gpu_memory_utilization,
            "free_bytes_at_start": stage.free_bytes_at_start,
            "weights_bytes": stage.weights_bytes,
            "activation_peak_bytes": stage.activation_peak_bytes,
            "non_torch_bytes": stage.non_torch_bytes,
            "cuda_graph_bytes": stage.cuda_graph_bytes,
            "non_kv_bytes": stage.non_kv_bytes,
            "fit_kv_cache_memory_bytes": stage.fit_kv_cache_memory_bytes,
            "full_kv_cache_memory_bytes": stage.full_kv_cache_memory_bytes,
            "kv_bytes_per_token": stage.kv_bytes_per_token,
            "bytes_per_block": stage.bytes_per_block,
            "block_size": stage.block_size,
            "tokens_alone": stage.tokens_alone,
            "uniform_num_blocks": stage.uniform_num_blocks,
            "uniform_allocated_bytes": stage.uniform_allocated_bytes,
            "idle_bytes_uniform": stage.idle_bytes_uniform,
            "fits_uniform": stage.fits_uniform,
            "proportional_kv_cache_memory_bytes": stage.proportional_kv_cache_memory_bytes,
            "layer_weights_bytes": stage.layer_weights_bytes,
            "methods": dict(stage.methods),
        })
    suggestion = plan.suggestion
    idle = [s.idle_bytes_uniform for s in plan.stages]
    return {
        "model": plan.model_id,
        "num_layers": plan.num_layers,
        "partition": list(plan.partition),
        "vllm_version": plan.vllm_version,
        "stages_shrink_to_minimum": plan.shrink,
        "mode": plan.mode,
        "non_kv_method": non_kv_way,
        "moved_layer_weights": {"method": plan.layer_weights_method, "source": plan.layer_weights_source},
        "max_model_len": plan.max_model_len,
        "feasible": plan.feasible,
        "shortfalls": [{"stage": f.stage, "kv_cache_bytes": f.kv_cache_bytes,
                        "fit_kv_cache_memory_bytes": f.fit_kv_cache_memory_bytes, "over_bytes": f.over_bytes,
                        "non_kv_fits": f.non_kv_fits} for f in plan.shortfalls],
        "stages": stages,
        "uniform": {**_capacity(plan.uniform), "given": plan.uniform_given, "idle_kind": plan.idle_kind,
                    "idle_bytes": None if None in idle else sum(idle), "command": plan.command},
        "proportional": {**_capacity(plan.proportional), "saved_bytes": plan.proportional_saved_bytes,
                         "gain_tokens": (None if plan.feasible is False
                                         else plan.proportional.tokens - plan.uniform.tokens)},
        "bottleneck_stage": plan.bottleneck_stage,
        "suggested_partition": list(suggestion.partition) if suggestion else None,
        "suggested_tokens": suggestion.capacity.tokens if suggestion else None,
        "suggestion": None if suggestion is None else {
            "partition": list(suggestion.partition),
            **_capacity(suggestion.capacity),
            "gain_tokens": suggestion.gain_tokens,
            "gain_percent": suggestion.gain_percent,
            "already_optimal": suggestion.already_optimal,
            "makes_feasible": suggestion.makes_feasible,
            "layers_moved": suggestion.layers_moved,
            "stage_fit_kv_cache_memory_bytes": list(suggestion.stage_fit_kv_cache_memory_bytes),
            "command": suggestion.command,
        },
        # the envelope's `command` is "pp-split": the serve line of the suggestion (else of the given split)
        "vllm_serve_command": suggestion.command if suggestion else plan.command,
    }


def _number(num_bytes: Any) -> str:
    """GiB without the unit, for table cells under a "(GiB)" title."""
    return "—" if num_bytes is None else f"{num_bytes / (1 << 30):.2f}"


def pp_split_renderer(document: dict[str, Any]) -> Callable[[Any], None]:
    """Rich tables for people, drawn from the JSON document (one source of truth)."""

    def render(console: Any) -> None:
        from rich.table import Table

        uniform, proportional = document["uniform"], document["proportional"]
        console.print(f"[bold]{document['model']}[/bold]  {document['num_layers']} layers, partition "
                      f"{','.join(map(str, document['partition']))}, vLLM {document['vllm_version']} rules; "
                      f"non-KV memory {document['non_kv_method']}")
        table = Table(title="Stages (GiB)", title_justify="left")
        for column in ("stage", "layers", "card", "non-KV", "fit", "KV B/tok", "tokens alone", "idle",
                       "proport.", "how"):
            table.add_column(column, justify="left" if column in ("card", "how", "layers") else "right")
        for stage in document["stages"]:
            card = stage["card"] or (_number(stage["total_bytes"]) if stage["total_bytes"] else "—")
            mark = "*" if stage["index"] == document["bottleneck_stage"] else ""
            table.add_row(f"{stage['index']}{mark}", f"{stage['first_layer']}-{stage['last_layer']}",
                          card, _number(stage["non_kv_bytes"]), _number(stage["fit_kv_cache_memory_bytes"]),
                          bytes_text(stage["kv_bytes_per_token"]), tokens_text(stage["tokens_alone"]),
                          _number(stage["idle_bytes_uniform"]),
                          _number(stage["proportional_kv_cache_memory_bytes"]), stage["methods"]["non_kv"][:9])
        console.print(table)
        console.print(f"* bottleneck stage: {document['bottleneck_stage']}")
        idle_word = ("reserved but unusable" if uniform["idle_kind"] == "reserved_unusable"
                     else "left idle (not allocated)")
        source = "given" if uniform["given"] else "largest safe on every stage"
        feasible = document["feasible"] is not False
        if feasible:
            console.print(f"[bold]Uniform[/bold] (one --kv-cache-memory-bytes for every stage, {source}): "
                          f"{bytes_text(uniform['kv_cache_memory_bytes'])} B "
                          f"({gib(uniform['kv_cache_memory_bytes'])}) -> {tokens_text(uniform['tokens'])} tokens, "
                          f"{concurrency_text(uniform['max_concurrency'])} at {document['max_model_len']:,}; "
                          f"{gib(uniform['idle_bytes'])} {idle_word}")
            saved = (f"frees {gib(proportional['saved_bytes'])} against uniform at the same capacity"
                     if uniform["idle_kind"] == "reserved_unusable" else
                     f"budgets {gib(proportional['saved_bytes'])} smaller than uniform at the same capacity "
                     "(this vLLM already leaves that memory unallocated)")
        else:
            budget = ("" if uniform["kv_cache_memory_bytes"] is None else
                      f" with {bytes_text(uniform['kv_cache_memory_bytes'])} B "
                      f"({gib(uniform['kv_cache_memory_bytes'])})")
            console.print(f"[bold]Does not fit[/bold]: partition {','.join(map(str, document['partition']))}"
                          f"{budget} overflows stage(s) "
                          f"{', '.join(str(f['stage']) for f in document['shortfalls'])}; vLLM would not start")
            saved = "no gain is counted against a plan that does not fit"
        console.print(f"[bold]Proportional[/bold] (budget per stage in proportion to its layers): "
                      f"{tokens_text(proportional['tokens'])} tokens; {saved}")
        suggestion = document["suggestion"]
        if suggestion is None:
            console.print("No partition fits these cards.")
        elif suggestion["makes_feasible"]:
            same = "the given partition" if suggestion["already_optimal"] else "suggested partition"
            console.print(f"[bold]What fits these cards[/bold]: {same} {','.join(map(str, suggestion['partition']))}"
                          f" with --kv-cache-memory-bytes {suggestion['kv_cache_memory_bytes']} "
                          f"({gib(suggestion['kv_cache_memory_bytes'])}): {tokens_text(suggestion['tokens'])} tokens "
                          f"({suggestion['layers_moved']} layers moved)")
        elif suggestion["already_optimal"]:
            console.print(f"[bold]Partition[/bold] {','.join(map(str, suggestion['partition']))} is already "
                          f"optimal: {tokens_text(suggestion['tokens'])} tokens")
        else:
            percent = "" if suggestion["gain_percent"] is None else f", {suggestion['gain_percent']:+.2f}%"
            console.print(f"[bold]Suggested partition[/bold] {','.join(map(str, suggestion['partition']))}: "
                          f"{tokens_text(suggestion['tokens'])} tokens "
                          f"({suggestion['gain_tokens']:+,} tokens{percent}; {suggestion['layers_moved']} "
                          "layers moved)")
        if uniform["command"]:
            console.print("Given partition:", style="bold")
            console.print(uniform["command"], markup=False, soft_wrap=True)
        if suggestion is not None and (suggestion["makes_feasible"] or not suggestion["already_optimal"]):
            console.print("Suggested:", style="bold")
            console.print(suggestion["command"], markup=False, soft_wrap=True)
        moved = document["moved_layer_weights"]
        if suggestion is not None and moved["source"]:
            console.print(f"Weights of moved layers: {moved['method']}, from {moved['source']}.")
        # warnings: commands/_common.execute prints the document's warnings on stderr (never here, on stdout)

    return render
