"""`kvadvise estimate MODEL --gpu NAME`: the profile report from the config alone, no GPU, every term estimated.

Thin: parse options, resolve them with the profile command's own rules, run kvadvise.estimate.engine,
hand the result to kvadvise.report.budget (the renderer and JSON document profile uses). torch is
imported only inside the command body (so --help stays light).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from kvadvise.commands import _budget_options as opts
from kvadvise.commands._common import (JsonOption, MinConcurrencyOption, MinTokensOption, Outcome, OutputOption,
                                       execute)


def estimate(
    model: str = opts.ModelArgument,
    gpu: Optional[str] = opts.gpu_option("The target card from the catalog (`kvadvise gpus`), "
                                         "e.g. h100, a100-80gb, rtx4090."),
    gpu_memory: Optional[str] = opts.gpu_memory_option("The card's total memory instead, e.g. 80GiB (overrides "
                                                       "--gpu's)."),
    gpu_free: Optional[str] = opts.gpu_free_option("Memory free at start if not all of it (other processes), "
                                                   "e.g. 78GiB."),
    util: float = opts.UtilOption,
    dtype: str = opts.DtypeOption,
    tensor_parallel_size: int = opts.tensor_parallel_size_option("Estimate one rank's shard."),
    partition: Optional[str] = opts.PartitionOption,
    stage: Optional[int] = opts.stage_option("estimate"),
    max_num_batched_tokens: Optional[int] = opts.max_num_batched_tokens_option("card"),
    max_num_seqs: Optional[int] = opts.max_num_seqs_option("card"),
    max_model_len: Optional[int] = opts.MaxModelLenOption,
    kv_cache_dtype: str = opts.KvCacheDtypeOption,
    block_size: Optional[int] = opts.BlockSizeOption,
    enforce_eager: bool = opts.EnforceEagerOption,
    cuda_graph_sizes: Optional[str] = opts.CudaGraphSizesOption,
    non_torch_memory: Optional[str] = typer.Option(None, "--non-torch-memory",
                                                   help="Non-torch memory to use instead of the family default, "
                                                        "e.g. 0.5GiB."),
    model_runner: str = opts.ModelRunnerOption,
    vllm_version: Optional[str] = opts.vllm_version_option("vLLM rules to mirror."),
    json_output: bool = JsonOption,
    output: Optional[Path] = OutputOption,
    min_tokens: Optional[int] = MinTokensOption,
    min_concurrency: Optional[float] = MinConcurrencyOption,
) -> None:
    """Estimate weights, peak activation, non-torch and CUDA-graph memory from the config; print the budget."""
    options = dict(model=model, gpu=gpu, gpu_memory=gpu_memory, gpu_free=gpu_free, util=util, dtype=dtype,
                   tensor_parallel_size=tensor_parallel_size, partition=partition, stage=stage,
                   max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                   max_model_len=max_model_len, kv_cache_dtype=kv_cache_dtype, block_size=block_size,
                   enforce_eager=enforce_eager, cuda_graph_sizes=cuda_graph_sizes,
                   non_torch_memory=non_torch_memory, vllm_version=vllm_version, model_runner=model_runner)

    def body() -> Outcome:
        return run_estimate_command(options)

    execute(body, json_mode=json_output, output=output, min_tokens=min_tokens, min_concurrency=min_concurrency)


def run_estimate_command(options: dict[str, Any]) -> Outcome:
    """Resolve the options, estimate, build the document and its renderer."""
    from kvadvise.commands.profile import resolve_settings
    from kvadvise.estimate.engine import estimate as run_estimate
    from kvadvise.estimate.engine import target_card
    from kvadvise.model.spec import load_model_spec
    from kvadvise.report.budget import budget_document, render_budget
    from kvadvise.units import parse_bytes

    # the card first: an unknown --gpu is bad input before any model is read
    total = parse_bytes(options["gpu_memory"], what="--gpu-memory") if options["gpu_memory"] else None
    free = parse_bytes(options["gpu_free"], what="--gpu-free") if options["gpu_free"] else None
    card = target_card(options["gpu"], total, free)
    non_torch = None
    if options["non_torch_memory"] is not None:
        text = str(options["non_torch_memory"]).strip()
        non_torch = 0 if text in ("0", "0B", "0GiB") else parse_bytes(text, what="--non-torch-memory")
    spec = load_model_spec(options["model"])
    warnings: list[str] = []
    profile_options = dict(options, load_format="dummy", device="cpu", trust_remote_code=False, revision=None)
    settings = resolve_settings(profile_options, spec, warnings)
    result = run_estimate(spec, settings, card, non_torch_bytes=non_torch)
    report = result.report
    if warnings:
        from dataclasses import replace

        report = replace(report, warnings=tuple(warnings) + report.warnings)
    inputs = {key: value for key, value in options.items()}
    document = budget_document(report, inputs=inputs, layout=result.layout, weight_buffers=result.weight_buffers,
                               extra={"estimate": result.detail})
    return Outcome(document=document, render=lambda console: render_budget(document, console),
                   tokens=report.fit.tokens, concurrency=report.fit.max_concurrency, error=result.does_not_fit)


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
