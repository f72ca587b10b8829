"""`kvadvise profile MODEL`: measure a model the way vLLM's profile run does; print --kv-cache-memory-bytes.

Thin: parse options, resolve them into ProfileSettings, run kvadvise.profile.session, hand the result to
kvadvise.report.budget. torch is imported only inside the command body (so --help stays light).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from kvadvise.commands import _budget_options as opts
from kvadvise.commands._common import (JsonOption, MinConcurrencyOption, MinTokensOption, Outcome, OutputOption,
                                       execute, stderr_console)
from kvadvise.errors import InputError

LOAD_FORMATS = ("auto", "dummy")
DTYPES = ("auto", "bfloat16", "float16")
PHASE_LABELS = {"baseline": "initialising the device", "load": "loading the model",
                "profile_run": "dummy max-batch run + sampler", "cuda_graphs": "capturing CUDA graphs"}


def parse_device(text: str) -> tuple[str, Optional[int]]:
    """`cuda`, `cuda:N` or `cpu` -> (kind, index)."""
    value = text.strip().lower()
    if value == "cpu":
        return "cpu", None
    if value == "cuda":
        return "cuda", 0
    if value.startswith("cuda:") and value[5:].isdigit():
        return "cuda", int(value[5:])
    raise InputError(f"--device: cannot read {text!r}", hint="use cuda, cuda:N or cpu")


def parse_graph_sizes(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """`--cuda-graph-sizes 512` (the largest size, vLLM's pattern below it) or `1,2,4,8` (explicit)."""
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--cuda-graph-sizes: cannot read {text!r}",
                         hint="one size (the largest captured) or a comma-separated list, e.g. 1,2,4,8") from None
    if any(size < 1 for size in sizes):
        raise InputError("--cuda-graph-sizes: every size must be >= 1")
    return sizes


class _Progress:
    """Rich progress on stderr: a spinner while a phase runs, a line with its time when it ends."""

    def __init__(self) -> None:
        self.console = stderr_console()
        self.status: Any = None
        self.started = 0.0

    def __call__(self, phase: str, state: str) -> None:
        label = PHASE_LABELS.get(phase, phase)
        if state == "start":
            self.started = time.monotonic()
            self.status = self.console.status(label + " ...")
            self.status.start()
        elif state.startswith("skipped"):
            self.stop()
            self.console.print(f"[yellow]-[/yellow] {label}: {state}")
        else:
            self.stop()
            self.console.print(f"[green]✓[/green] {label} ({time.monotonic() - self.started:.1f} s)")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def profile(
    model: str = opts.ModelArgument,
    util: float = opts.UtilOption,
    device: str = typer.Option("cuda", "--device", help="cuda[:N] (measure on the GPU) or cpu (on the host)."),
    load_format: str = typer.Option("auto", "--load-format",
                                    help="auto: the checkpoint's weights; dummy: built from the config."),
    dtype: str = opts.DtypeOption,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own code."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of MODEL."),
    max_num_batched_tokens: Optional[int] = opts.max_num_batched_tokens_option("device"),
    max_num_seqs: Optional[int] = opts.max_num_seqs_option("device"),
    max_model_len: Optional[int] = opts.MaxModelLenOption,
    kv_cache_dtype: str = opts.KvCacheDtypeOption,
    block_size: Optional[int] = opts.BlockSizeOption,
    enforce_eager: bool = opts.EnforceEagerOption,
    cuda_graph_sizes: Optional[str] = opts.CudaGraphSizesOption,
    tensor_parallel_size: int = opts.tensor_parallel_size_option(
        "Measure one rank's shard (shape-equivalent, dummy weights)."),
    partition: Optional[str] = opts.PartitionOption,
    stage: Optional[int] = opts.stage_option("measure"),
    gpu: Optional[str] = opts.gpu_option("CPU mode: the target card from the catalog."),
    gpu_memory: Optional[str] = opts.gpu_memory_option("CPU mode: the target card's total memory, e.g. 24GiB."),
    gpu_free: Optional[str] = opts.gpu_free_option(
        "CPU mode: the target card's free memory at start (default: total)."),
    model_runner: str = opts.ModelRunnerOption,
    vllm_version: Optional[str] = opts.vllm_version_option(),
    json_output: bool = JsonOption,
    output: Optional[Path] = OutputOption,
    min_tokens: Optional[int] = MinTokensOption,
    min_concurrency: Optional[float] = MinConcurrencyOption,
) -> None:
    """Measure weights, peak activation, non-torch and CUDA-graph memory; print the exact budget."""
    options = dict(model=model, util=util, device=device, load_format=load_format, dtype=dtype,
                   trust_remote_code=trust_remote_code, revision=revision,
                   max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                   max_model_len=max_model_len, kv_cache_dtype=kv_cache_dtype, block_size=block_size,
                   enforce_eager=enforce_eager, cuda_graph_sizes=cuda_graph_sizes,
                   tensor_parallel_size=tensor_parallel_size, partition=partition, stage=stage, gpu=gpu,
                   gpu_memory=gpu_memory, gpu_free=gpu_free, vllm_version=vllm_version, model_runner=model_runner)

    def body() -> Outcome:
        return run_profile_command(options, progress=_Progress())

    execute(body, json_mode=json_output, output=output, min_tokens=min_tokens, min_concurrency=min_concurrency)


def _target_card(kind: str, gpu: Optional[str], gpu_memory: Optional[str], gpu_free: Optional[str],
                 warnings: list[str]) -> Any:
    """CPU mode: the card the advice is for (--gpu from the catalog and/or --gpu-memory, as `estimate` reads
    them; else the host's memory)."""
    from kvadvise.profile.session import TargetDevice
    from kvadvise.units import parse_bytes

    if kind != "cpu":
        if gpu is not None or gpu_memory is not None or gpu_free is not None:
            raise InputError("--gpu / --gpu-memory / --gpu-free name the target card of a host run; with "
                             "--device cuda the card is measured", hint="drop them, or add --device cpu")
        return None
    if gpu is None and gpu_memory is None:
        if gpu_free is not None:
            raise InputError("--gpu-free needs the card: --gpu NAME or --gpu-memory SIZE")
        from kvadvise.profile.device import host_memory_bytes

        free, total = host_memory_bytes()
        warnings.append("no --gpu / --gpu-memory: the advice is for a device the size of this host's memory")
        return TargetDevice(name="host memory", total_bytes=total, free_bytes_at_start=free, source="host memory")
    from kvadvise.estimate.engine import target_card   # the same reading of the options as `estimate`

    card = target_card(gpu, None if gpu_memory is None else parse_bytes(gpu_memory, what="--gpu-memory"),
                       None if gpu_free is None else parse_bytes(gpu_free, what="--gpu-free"))
    if gpu_free is None:
        warnings.append("free memory at start is taken as the card's total (--gpu-free not given): a real card "
                        "has the CUDA context (typically 0.3-0.6 GiB) and any other process's memory in use "
                        "before vLLM starts, so the 'full' value is an upper bound; 'fit' does not depend on it")
    return TargetDevice(name=card.name, total_bytes=card.total_bytes, free_bytes_at_start=card.free_bytes_at_start,
                        source=card.source, family=card.family, catalog_key=card.catalog_key)


def resolve_settings(options: dict[str, Any], spec: Any, warnings: list[str]) -> Any:
    """Check the options against the model and turn them into ProfileSettings."""
    from kvadvise.plan.kv import DEFAULT_VLLM_VERSION, KV_CACHE_DTYPES, VLLM_VERSIONS, check_block_size
    from kvadvise.plan.pp import check_partition, parse_partition
    from kvadvise.profile.session import ProfileSettings

    util = options["util"]
    if not 0 < util <= 1:
        raise InputError(f"--util must be in (0, 1], got {util}")
    if options["load_format"] not in LOAD_FORMATS:
        raise InputError(f"--load-format: {options['load_format']!r} is not one of {', '.join(LOAD_FORMATS)}")
    if options["dtype"] not in DTYPES:
        raise InputError(f"--dtype: {options['dtype']!r} is not one of {', '.join(DTYPES)}")
    if options["kv_cache_dtype"] not in KV_CACHE_DTYPES:
        raise InputError(f"--kv-cache-dtype: {options['kv_cache_dtype']!r} is not one of "
                         f"{', '.join(KV_CACHE_DTYPES)}")
    version = options["vllm_version"] or DEFAULT_VLLM_VERSION
    if version not in VLLM_VERSIONS:
        raise InputError(f"--vllm-version: {version!r} is not one we mirror", hint="one of " + ", ".join(VLLM_VERSIONS))
    runner = options.get("model_runner") or "auto"
    from kvadvise.profile.sampler import check_model_runner

    check_model_runner(runner, version)
    for key in ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "block_size"):
        if options[key] is not None and options[key] < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {options[key]}")
    check_block_size(options["block_size"])
    if options["tensor_parallel_size"] < 1:
        raise InputError(f"--tensor-parallel-size must be >= 1, got {options['tensor_parallel_size']}")
    partition = None
    stage = options["stage"]
    if options["partition"] is not None:
        partition = check_partition(parse_partition(options["partition"]), spec.num_layers)
        if stage is None:
            raise InputError("--partition needs --stage: which pipeline stage to measure",
                             hint=f"--stage 0 .. {len(partition) - 1}")
        if not 0 <= stage < len(partition):
            raise InputError(f"--stage {stage} is outside the partition ({len(partition)} stages)",
                             hint=f"--stage 0 .. {len(partition) - 1}")
    elif stage is not None:
        raise InputError("--stage needs --partition", hint="e.g. --partition 48,16 --stage 1")
    load_format = options["load_format"]
    if load_format == "auto" and Path(options["model"]).expanduser().is_file():
        raise InputError(f"{options['model']} is a config file: there are no weights to load",
                         hint="add --load-format dummy (the same memory, built from the config)")
    if load_format == "auto" and not _has_weight_files(Path(spec.config_path).parent):
        raise InputError(f"no weight files (*.safetensors, *.bin) beside {spec.config_path}",
                         hint="add --load-format dummy (the same memory, built from the config), or point MODEL at "
                              "a checkpoint directory")
    if (options["tensor_parallel_size"] > 1 or partition is not None) and load_format == "auto":
        load_format = "dummy"
        warnings.append("a tensor-parallel rank or pipeline stage is built from the config with dummy weights "
                        "(--load-format dummy): the same shapes, hence the same memory")
    return ProfileSettings(
        model_id=options["model"], load_format=load_format, dtype=options["dtype"],
        trust_remote_code=options["trust_remote_code"], revision=options["revision"], gpu_memory_utilization=util,
        max_num_batched_tokens=options["max_num_batched_tokens"], max_num_seqs=options["max_num_seqs"],
        max_model_len=options["max_model_len"], kv_cache_dtype=options["kv_cache_dtype"],
        block_size=options["block_size"], enforce_eager=options["enforce_eager"],
        cuda_graph_sizes=parse_graph_sizes(options["cuda_graph_sizes"]),
        tensor_parallel_size=options["tensor_parallel_size"], partition=partition, stage=stage,
        vllm_version=version, model_runner=runner)


def _has_weight_files(directory: Path) -> bool:
    return any(any(directory.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth"))


def inputs_block(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items()}


def run_profile_command(options: dict[str, Any], *, progress: Any = None, device: Any = None,
                        workload: Any = None) -> Outcome:
    """Resolve, measure, report. `device` / `workload` let tests pass a fake; by default the real ones."""
    import os

    from kvadvise.model.spec import load_model_spec
    from kvadvise.profile import session
    from kvadvise.report.budget import budget_document, partial_document, phases_block, render_budget

    warnings: list[str] = []
    kind, index = parse_device(options["device"])
    spec = load_model_spec(options["model"], revision=options["revision"])
    settings = resolve_settings(options, spec, warnings)
    target = _target_card(kind, options["gpu"], options["gpu_memory"], options["gpu_free"], warnings)
    nvml_reader = None
    if device is None:
        device, nvml_reader = _make_device(kind, index, target)
    if workload is None:
        workload = session.TorchWorkload(spec, settings, device, model_path=os.path.dirname(spec.config_path),
                                         target_family=target.family if target is not None else None)
    inputs = inputs_block(options)
    try:
        result = session.run_profile(settings, spec, device, workload, target=target, nvml_reader=nvml_reader,
                                     progress=progress or (lambda phase, state: None))
    except session.ProfileOutOfMemory as error:
        partial = error.partial
        document = partial_document(
            "profile", inputs=inputs, model_id=settings.model_id, device=partial.device,
            memory=partial.measurements, settings=_partial_settings(settings),
            max_num_batched_tokens=partial.max_num_batched_tokens, max_num_seqs=partial.max_num_seqs,
            status="out_of_memory", layout=partial.layout or _fallback_layout(settings, spec),
            extra={"measurement": {"device_measured": device.torch_device, "phases": phases_block(partial.phases),
                                   "failed_phase": error.phase, "shape_equivalent": session.shape_note(settings)}},
            warnings=warnings + list(partial.warnings))
        return Outcome(document=document, render=lambda console: render_budget(document, console), error=error)
    finally:
        if hasattr(progress, "stop"):
            progress.stop()     # a spinner must not outlive a failed phase
    report = result.report
    if warnings:
        from dataclasses import replace

        report = replace(report, warnings=tuple(warnings) + report.warnings)
    document = budget_document(report, inputs=inputs, layout=result.layout, weight_buffers=result.weight_buffers,
                               extra={"measurement": {
        "device_measured": device.torch_device, "phases": phases_block(result.phases), "failed_phase": None,
        "shape_equivalent": result.shape_note}})
    return Outcome(document=document, render=lambda console: render_budget(document, console),
                   tokens=report.fit.tokens, concurrency=report.fit.max_concurrency, error=result.does_not_fit)


def _fallback_layout(settings: Any, spec: Any) -> Any:
    """The KV layout when out of memory struck before the batch defaults were read (during device init)."""
    from kvadvise.plan.kv import DEFAULT_MAX_NUM_BATCHED_TOKENS
    from kvadvise.profile.session import kv_layout_for

    return kv_layout_for(settings, spec, settings.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS)


def _partial_settings(settings: Any) -> dict[str, Any]:
    return {"gpu_memory_utilization": settings.gpu_memory_utilization,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "pipeline_parallel_size": settings.pipeline_parallel_size,
            "partition": list(settings.partition) if settings.partition else None, "stage": settings.stage,
            "kv_cache_dtype": settings.kv_cache_dtype, "vllm_version": settings.vllm_version}


def _make_device(kind: str, index: Optional[int], target: Any) -> tuple[Any, Any]:
    """The real device (CUDA, or the host with a live-bytes tracker) and, on CUDA, an NVML reader."""
    from kvadvise.profile import device as devices

    if kind == "cpu":
        from kvadvise.profile.tracker import LiveBytesTracker

        return devices.CpuDevice(target.total_bytes, target.free_bytes_at_start, tracker=LiveBytesTracker(),
                                 target_name=target.name), None
    from kvadvise.profile.session import require_cuda

    if not devices.cuda_available():
        require_cuda(f"cuda:{index}")
    count = devices.cuda_device_count()
    if index is None or index >= count:
        raise InputError(f"--device cuda:{index}: only {count} CUDA device(s) visible",
                         hint=f"use cuda:0 .. cuda:{count - 1}")
    from kvadvise.profile.nvml import read_nvml_for

    return devices.CudaDevice(index), read_nvml_for


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
