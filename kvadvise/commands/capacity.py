"""`kvadvise capacity`: what a --kv-cache-memory-bytes budget buys, by vLLM's arithmetic, from the config alone.

Arithmetic only: no torch, no transformers on this path (answers in well under half a second).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kvadvise.commands._common import (JsonOption, MinConcurrencyOption, MinTokensOption, Outcome, OutputOption,
                                       execute, parse_positive_int,
                                       vllm_version_callback)

# Integer options are read as text and parsed here, so a bad value is one `error:` line (exit 2).
_INT_METAVAR = "N"


def capacity(
    model: str = typer.Argument(..., help="Hub id (local HF cache), a directory with config.json, or a JSON file."),
    kv_cache_memory_bytes: Optional[str] = typer.Option(
        None, "--kv-cache-memory-bytes", metavar="BYTES",
        help="KV-cache budget per GPU, as vLLM takes it: 16g (10^9), 16G (2^30), 80GiB, 80GB or bytes."),
    tensor_parallel_size: Optional[str] = typer.Option(
        "1", "--tensor-parallel-size", "-tp", metavar=_INT_METAVAR, help="Tensor-parallel size (KV heads split per rank)."),
    kv_cache_dtype: str = typer.Option(
        "auto", "--kv-cache-dtype", metavar="DTYPE",
        help="auto (the model dtype), bfloat16, float16, fp8, fp8_e4m3, fp8_e5m2."),
    block_size: Optional[str] = typer.Option(
        None, "--block-size", metavar=_INT_METAVAR,
        help="Tokens per KV block (default 16; MLA models 64, FlashMLA on Hopper; hybrid Mamba models raise it)."),
    max_model_len: Optional[str] = typer.Option(
        None, "--max-model-len", metavar=_INT_METAVAR, help="Tokens per request (default: the model's own)."),
    max_num_batched_tokens: Optional[str] = typer.Option(
        None, "--max-num-batched-tokens", metavar=_INT_METAVAR,
        help="Sliding-window / chunked-local per-request maximum depends on it (default 8192)."),
    vllm_version: str = typer.Option(
        "0.33", "--vllm-version", metavar="V", callback=vllm_version_callback, help="vLLM rules to apply: 0.10.2, 0.11, 0.12 or 0.33 (newest)."),
    mamba_cache_mode: Optional[str] = typer.Option(
        None, "--mamba-cache-mode", metavar="MODE",
        help="Hybrid Mamba models: none (one state block per request) or align (Mamba prefix caching, two); "
             "default: the version's (0.33: align, older: none)."),
    mamba_ssm_cache_dtype: str = typer.Option(
        "auto", "--mamba-ssm-cache-dtype", metavar="DTYPE",
        help="Hybrid Mamba models: SSM state dtype, as vLLM takes it (auto, float32, bfloat16, float16)."),
    json_mode: bool = JsonOption,
    output: Optional[Path] = OutputOption,
    min_tokens: Optional[int] = MinTokensOption,
    min_concurrency: Optional[float] = MinConcurrencyOption,
) -> None:
    """KV bytes per token, page size, blocks, tokens and max concurrency a KV budget buys under vLLM."""

    def body() -> Outcome:
        from kvadvise.errors import InputError
        from kvadvise.model.spec import load_model_spec
        from kvadvise.plan.kv import KvSettings, budget_for_model_len, check_block_size, kv_capacity, kv_layout
        from kvadvise.report.capacity import capacity_renderer, kv_cache_json, model_json
        from kvadvise.report.common import make_document
        from kvadvise.units import parse_bytes

        if kv_cache_memory_bytes is None:
            raise InputError("--kv-cache-memory-bytes is required",
                             hint="give the per-GPU KV budget, e.g. --kv-cache-memory-bytes 40GiB")
        budget = parse_bytes(kv_cache_memory_bytes, what="--kv-cache-memory-bytes")
        settings = KvSettings(
            tensor_parallel_size=parse_positive_int(tensor_parallel_size, "--tensor-parallel-size") or 1,
            kv_cache_dtype=kv_cache_dtype.strip(),
            block_size=check_block_size(parse_positive_int(block_size, "--block-size")),
            max_model_len=parse_positive_int(max_model_len, "--max-model-len"),
            max_num_batched_tokens=parse_positive_int(max_num_batched_tokens, "--max-num-batched-tokens"),
            vllm_version=vllm_version.strip(),
            mamba_cache_mode=mamba_cache_mode,
            mamba_ssm_cache_dtype=mamba_ssm_cache_dtype,
        )
        spec = load_model_spec(model)
        layout = kv_layout(spec, settings)
        result = kv_capacity(layout, budget)
        warnings = list(spec.notes) + list(layout.assumptions)
        inputs = {
            "model": model,
            "kv_cache_memory_bytes": budget,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "kv_cache_dtype": settings.kv_cache_dtype,
            "block_size": settings.block_size,
            "max_model_len": settings.max_model_len,
            "max_num_batched_tokens": settings.max_num_batched_tokens,
            "vllm_version": settings.vllm_version,
            "mamba_cache_mode": settings.mamba_cache_mode,
            "mamba_ssm_cache_dtype": settings.mamba_ssm_cache_dtype,
        }
        document = make_document("capacity", inputs,
                                 {"model": model_json(spec), "kv_cache": kv_cache_json(layout, result)}, warnings)
        error = None
        if not result.fits_one_request:
            error = InputError(
                f"one request of {layout.max_model_len:,} tokens needs {layout.blocks_per_request:,} blocks but "
                f"{budget:,} bytes buy {result.num_blocks:,}: vLLM would refuse to start",
                hint=(f"--max-model-len {result.largest_fitting_model_len} is the longest that fits, or give "
                      if result.largest_fitting_model_len else "not even one token fits; give ")
                + f"--kv-cache-memory-bytes {budget_for_model_len(layout)} for one full-length request")
        return Outcome(document=document, render=capacity_renderer(document, layout, result),
                       tokens=result.tokens, concurrency=result.max_concurrency, error=error)

    execute(body, json_mode=json_mode, output=output, min_tokens=min_tokens, min_concurrency=min_concurrency)


def register(app: typer.Typer) -> None:
    app.command("capacity")(capacity)
