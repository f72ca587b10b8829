"""The KV-cache block of every capacity-bearing report: its JSON (schemas/kv_cache.json) and its tables.

`kv_cache_json` and `kv_cache_table` are shared: profile and estimate put the same block in their
documents (`{"$ref": "kv_cache.json#/$defs/kv_cache"}`) and the same table in their output.
Knows how to show a KvLayout and a KvCapacity; computes nothing itself.
"""

from __future__ import annotations

from typing import Any, Callable

from kvadvise.plan.kv import KvCapacity, KvLayout
from kvadvise.report.common import bytes_text, concurrency_text, gib, tokens_text


def kv_cache_json(layout: KvLayout, capacity: KvCapacity) -> dict[str, Any]:
    """The `kv_cache` object of a JSON document (see docs/json/capacity.md)."""
    return {
        "vllm_version": layout.vllm_version,
        "rules": layout.rules,
        "kv_cache_dtype": layout.kv_cache_dtype,
        "kv_cache_dtype_bytes": layout.kv_cache_dtype_bytes,
        "tensor_parallel_size": layout.settings.tensor_parallel_size,
        "kv_heads_per_rank": layout.kv_heads_per_rank,
        "bytes_per_token": layout.bytes_per_token,
        "bytes_per_token_by_kind": dict(layout.bytes_per_token_by_kind),
        "mamba_state_bytes_per_request": layout.mamba_state_bytes_per_request,
        "mamba_cache_mode": layout.mamba_cache_mode,
        "page_size_bytes": layout.page_size_bytes,
        "block_size": layout.block_size,
        "group_size": layout.group_size,
        "num_groups": layout.num_groups,
        "groups": [
            {
                "kind": group.kind.value,
                "num_layers": len(group.layer_indices),
                "layer_indices": list(group.layer_indices),
                "block_size": group.block_size,
                "page_size_bytes": group.page_size_bytes,
                "unpadded_page_size_bytes": group.unpadded_page_size_bytes,
                "sliding_window": group.sliding_window,
                "attention_chunk_size": group.attention_chunk_size,
                "blocks_per_request": group.blocks_per_request,
            }
            for group in layout.groups
        ],
        "max_num_batched_tokens": layout.max_num_batched_tokens,
        "available_bytes": capacity.available_bytes,
        "num_blocks": capacity.num_blocks,
        "tokens": capacity.tokens,
        "max_model_len": capacity.max_model_len,
        "blocks_per_request": layout.blocks_per_request,
        "max_concurrency": capacity.max_concurrency,
        "fits_one_request": capacity.fits_one_request,
        "largest_fitting_model_len": capacity.largest_fitting_model_len,
        "notes": list(layout.notes),
    }


def _per_token_table(layout: KvLayout):
    from rich.table import Table

    table = Table(title="KV bytes per token (one TP rank)", title_justify="left")
    table.add_column("layer kind")
    table.add_column("layers", justify="right")
    table.add_column("bytes / token", justify="right")
    layer_counts: dict[str, int] = {}
    for group in layout.groups:
        layer_counts[group.kind.value] = layer_counts.get(group.kind.value, 0) + len(group.layer_indices)
    for kind, per_token in layout.bytes_per_token_by_kind.items():
        table.add_row(kind, str(layer_counts.get(kind, 0)), bytes_text(per_token))
    table.add_row("total (attention)", str(sum(layer_counts.get(k, 0) for k in layout.bytes_per_token_by_kind)),
                  bytes_text(layout.bytes_per_token), style="bold")
    if layout.mamba_state_bytes_per_request is not None:
        table.add_row("mamba state / request", str(layer_counts.get("mamba", 0)),
                      f"{bytes_text(layout.mamba_state_bytes_per_request)} per request")
    return table


def kv_cache_table(layout: KvLayout, capacity: KvCapacity, *, title: str = "What the KV budget buys"):
    """A rich Table of the budget, pages, blocks, tokens and concurrency."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    table.add_row("KV budget per rank", f"{bytes_text(capacity.available_bytes)} B",
                  gib(capacity.available_bytes))
    table.add_row("page (one layer, one block)", f"{bytes_text(layout.page_size_bytes)} B",
                  f"block of {layout.block_size} tokens, {layout.kv_cache_dtype} KV")
    groups_by_kind: dict[str, int] = {}
    for group in layout.groups:
        groups_by_kind[group.kind.value] = groups_by_kind.get(group.kind.value, 0) + 1
    group_kinds = ", ".join(f"{count} {kind}" for kind, count in groups_by_kind.items())
    table.add_row("groups x layers per group", f"{layout.num_groups} x {layout.group_size}", group_kinds)
    table.add_row("blocks", bytes_text(capacity.num_blocks),
                  f"{bytes_text(capacity.available_bytes)} // {bytes_text(layout.page_size_bytes)} "
                  f"// {layout.group_size}")
    table.add_row("GPU KV cache size", f"{tokens_text(capacity.tokens)} tokens",
                  "int(concurrency x max_model_len)" if layout.tokens_from_concurrency
                  else f"blocks // {layout.num_groups} x {layout.block_size}")
    table.add_row(f"max concurrency at {capacity.max_model_len:,} tokens", concurrency_text(capacity.max_concurrency),
                  f"blocks / {layout.blocks_per_request:,} blocks per request")
    if not capacity.fits_one_request:
        table.add_row("max model len that fits", tokens_text(capacity.largest_fitting_model_len),
                      f"one {capacity.max_model_len:,}-token request does not fit", style="bold red")
    return table


def capacity_renderer(document: dict[str, Any], layout: KvLayout, capacity: KvCapacity) -> Callable[[Any], None]:
    """The human rendering of `kvadvise capacity`: tables on stdout (commands/_common prints the warnings)."""

    def render(console: Any) -> None:
        from rich.markup import escape

        model = document["model"]
        console.print(f"[bold]{escape(model['model_id'])}[/bold] ({escape(model['model_type'])}, "
                      f"{model['num_layers']} layers, {model['dtype']}), TP {layout.settings.tensor_parallel_size}, "
                      f"vLLM {layout.vllm_version} rules")
        console.print(_per_token_table(layout))
        console.print(kv_cache_table(layout, capacity))
        for note in layout.notes:
            console.print(f"note: {note}", style="dim", markup=False)
        console.print(layout.rules, style="dim", markup=False)

    return render


def model_json(spec: Any) -> dict[str, Any]:
    """The `model` object: what kvadvise read from the config."""
    return {
        "model_id": spec.model_id,
        "config_path": spec.config_path,
        "model_type": spec.model_type,
        "architectures": list(spec.architectures),
        "num_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_kv_heads": spec.num_kv_heads,
        "head_size": spec.head_size,
        "dtype": spec.dtype,
        "max_model_len": spec.max_model_len,
        "is_mla": spec.is_mla,
        "notes": list(spec.notes),
    }
