"""`kvadvise pp-split`: per-stage KV budgets for (asymmetric) pipeline parallelism and a better partition.

Where each stage's non-KV terms come from: --stage-profile files (measured where each stage runs), the
estimate engine per stage shape (--estimate, or cards without a CUDA device; imports torch inside the
body), parameter counts (--parameter-counts: no torch), or nothing (--kv-cache-memory-bytes alone). The
budget, stage-profile and parameter-count paths are arithmetic only: no torch, no transformers, well under
half a second. Measuring each stage on a local CUDA card needs the profile command's --stage path: until
it is wired in, that case says so (exit 3).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from kvadvise.commands._common import (JsonOption, MinConcurrencyOption, MinTokensOption, Outcome, OutputOption,
                                       execute, parse_positive_int)


def _per_stage(values: list, stages: int, what: str) -> list:
    """One value for every stage, or exactly one per stage."""
    from kvadvise.errors import InputError

    if len(values) == 1:
        return values * stages
    if len(values) != stages:
        raise InputError(f"{what} lists {len(values)} values for {stages} stages: give one for all stages "
                         "or one per stage")
    return values


def _utilizations(text: Optional[str]) -> Optional[list[float]]:
    from kvadvise.errors import InputError

    if text is None:
        return None
    values = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"--util: cannot read {part!r} as a fraction such as 0.9") from None
        if not 0 < value <= 1:
            raise InputError(f"--util must be in (0, 1], got {part.strip()}")
        values.append(value)
    return values


def _cuda_device_present() -> bool:
    """A cheap look for an NVIDIA device node; never imports torch (this path must stay arithmetic)."""
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")


def _read_stage_profile(path: str, index: int) -> dict:
    """The documented keys of a `kvadvise profile --partition ... --stage i --json` document."""
    from kvadvise.errors import InputError

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--stage-profile: no such file {path}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"--stage-profile {path}: cannot read it as JSON ({error})") from None
    memory = document.get("memory") if isinstance(document, dict) else None
    device = document.get("device") if isinstance(document, dict) else None
    if not isinstance(memory, dict) or not isinstance(device, dict):
        raise InputError(f"--stage-profile {path}: not a `kvadvise profile --json` document (no memory/device)")
    values = {}
    for key in ("weights_bytes", "activation_peak_bytes", "non_torch_bytes", "cuda_graph_bytes"):
        value = memory.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"--stage-profile {path}: memory.{key} is {value!r}, not a byte count")
        values[key] = value
    for key in ("total_bytes", "free_bytes_at_start"):
        value = device.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"--stage-profile {path}: device.{key} is {value!r}, not a byte count")
        values[key] = value
    settings = document.get("settings") if isinstance(document.get("settings"), dict) else {}
    values["methods"] = {term: memory.get(f"{term}_method", "measured")
                         for term in ("weights", "activation_peak", "non_torch", "cuda_graph")}
    values["gpu_memory_utilization"] = settings.get("gpu_memory_utilization")
    values["partition"] = settings.get("partition")
    values["stage"] = settings.get("stage")
    values["device_name"] = device.get("name")
    values["device_kind"] = device.get("kind")
    values["path"] = path
    return values


def _engine_estimates(spec, split, cards, settings, *, model: str, max_num_seqs, utils):
    """Each stage's non-KV terms from the estimate engine (fake tensors: imports torch)."""
    from kvadvise.estimate.engine import TargetCard, estimate
    from kvadvise.plan import pp
    from kvadvise.profile.session import ProfileSettings

    result, warnings = [], []
    for index, card in enumerate(cards):
        name, family, key = card.name, None, None
        if card.source == "catalog":
            from kvadvise.gpus import lookup_gpu

            found = lookup_gpu(card.name)
            name, family, key = found.device_name, found.family, found.key
        target = TargetCard(name, card.total_bytes, card.total_bytes, card.source, family, key)
        stage_settings = ProfileSettings(
            model_id=model, load_format="dummy", gpu_memory_utilization=utils[index],
            max_num_batched_tokens=settings.max_num_batched_tokens, max_num_seqs=max_num_seqs,
            max_model_len=settings.max_model_len, kv_cache_dtype=settings.kv_cache_dtype,
            block_size=settings.block_size, tensor_parallel_size=settings.tensor_parallel_size,
            partition=tuple(split), stage=index, vllm_version=settings.vllm_version)
        memory = estimate(spec, stage_settings, target).report
        for warning in memory.warnings:
            text = f"stage {index}: {warning}"
            if warning not in [w.split(": ", 1)[1] for w in warnings]:
                warnings.append(text)
        terms = memory.memory
        result.append(pp.StageNonKv(
            terms.weights_bytes, terms.activation_peak_bytes, terms.non_torch_bytes, terms.cuda_graph_bytes,
            "estimated", "estimate engine",
            {"weights": terms.weights_method, "activation_peak": terms.activation_peak_method,
             "non_torch": terms.non_torch_method, "cuda_graph": terms.cuda_graph_method}))
    return result, warnings


def pp_split(
    model: str = typer.Argument(..., help="Hub id (local HF cache), a directory with config.json, or a JSON file."),
    more_stage_profiles: Optional[List[str]] = typer.Argument(
        None, metavar="STAGE_PROFILE", help="More --stage-profile files (`--stage-profile s0.json s1.json`)."),
    partition: Optional[str] = typer.Option(
        None, "--partition", metavar="A,B,...", help="Layers per stage, as VLLM_PP_LAYER_PARTITION: 48,16."),
    pipeline_parallel_size: Optional[str] = typer.Option(
        None, "--pipeline-parallel-size", "-pp", metavar="N", help="Stages, split as vLLM does by default."),
    gpu: Optional[str] = typer.Option(
        None, "--gpu", metavar="NAME[,NAME...]", help="Catalog card for every stage, or one per stage."),
    gpu_memory: Optional[str] = typer.Option(
        None, "--gpu-memory", metavar="SIZE[,SIZE...]",
        help="Total memory per card (as CUDA reports it): 16GiB,32GiB; one for all stages or one per stage."),
    util: Optional[str] = typer.Option(
        None, "--util", "--gpu-memory-utilization", metavar="U[,U...]",
        help="gpu_memory_utilization, one for all stages or one per stage (default 0.9)."),
    tensor_parallel_size: Optional[str] = typer.Option(
        "1", "--tensor-parallel-size", "-tp", metavar="N", help="Tensor-parallel size inside every stage."),
    estimate: bool = typer.Option(
        False, "--estimate", help="Estimate each stage's non-KV memory from the config (no GPU)."),
    parameter_counts: bool = typer.Option(
        False, "--parameter-counts",
        help="Estimate from parameter counts and rules of thumb only: no torch, well under a second, rougher."),
    stage_profile: Optional[List[str]] = typer.Option(
        None, "--stage-profile", metavar="FILE",
        help="`kvadvise profile --partition ... --stage i --json` output of each stage, in stage order."),
    kv_cache_memory_bytes: Optional[str] = typer.Option(
        None, "--kv-cache-memory-bytes", metavar="BYTES",
        help="A budget to evaluate (the one vLLM applies to every stage): 16G, 80GiB or bytes."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", metavar="DTYPE",
                                       help="auto, bfloat16, float16, fp8, fp8_e4m3, fp8_e5m2."),
    block_size: Optional[str] = typer.Option(None, "--block-size", metavar="N", help="Tokens per KV block."),
    max_model_len: Optional[str] = typer.Option(None, "--max-model-len", metavar="N",
                                                help="Tokens per request (default: the model's own)."),
    max_num_batched_tokens: Optional[str] = typer.Option(
        None, "--max-num-batched-tokens", metavar="N", help="Profile batch (estimates, sliding windows)."),
    max_num_seqs: Optional[str] = typer.Option(None, "--max-num-seqs", metavar="N",
                                               help="Sampler rows on the last stage (estimates)."),
    vllm_version: str = typer.Option("0.33", "--vllm-version", metavar="V",
                                     help="vLLM rules: 0.10.2, 0.11 (stages keep their tensors), 0.12, 0.33."),
    json_mode: bool = JsonOption,
    output: Optional[Path] = OutputOption,
    min_tokens: Optional[int] = MinTokensOption,
    min_concurrency: Optional[float] = MinConcurrencyOption,
) -> None:
    """Per-stage KV budgets for pipeline parallelism: uniform vs proportional, bottleneck, best partition."""

    def body() -> Outcome:
        from kvadvise.errors import EnvironmentProblem, InputError
        from kvadvise.model.spec import load_model_spec
        from kvadvise.plan import pp
        from kvadvise.plan.kv import KvSettings
        from kvadvise.report.common import make_document
        from kvadvise.report.pp_split import pp_split_json, pp_split_renderer
        from kvadvise.units import parse_bytes, parse_bytes_list

        profiles = [p for text in (stage_profile or []) for p in str(text).split(",") if p.strip()]
        if more_stage_profiles:
            if not profiles:
                raise InputError(f"unexpected argument {more_stage_profiles[0]!r}",
                                 hint="give the model once; stage profiles follow --stage-profile")
            profiles += list(more_stage_profiles)
        if profiles and (estimate or parameter_counts):
            raise InputError("--stage-profile and --estimate both given: choose measured or estimated terms")
        if gpu is not None and gpu_memory is not None:
            raise InputError("--gpu and --gpu-memory both given: name the cards or give their memory, not both")
        if profiles and (gpu is not None or gpu_memory is not None):
            raise InputError("--stage-profile already says each stage's card; drop --gpu / --gpu-memory")

        settings = KvSettings(
            tensor_parallel_size=parse_positive_int(tensor_parallel_size, "--tensor-parallel-size") or 1,
            kv_cache_dtype=kv_cache_dtype,
            block_size=parse_positive_int(block_size, "--block-size"),
            max_model_len=parse_positive_int(max_model_len, "--max-model-len"),
            max_num_batched_tokens=parse_positive_int(max_num_batched_tokens, "--max-num-batched-tokens"),
            vllm_version=vllm_version,
        )
        seqs = parse_positive_int(max_num_seqs, "--max-num-seqs")
        budget = (parse_bytes(kv_cache_memory_bytes, what="--kv-cache-memory-bytes")
                  if kv_cache_memory_bytes is not None else None)
        utilizations = _utilizations(util)
        stages_asked = parse_positive_int(pipeline_parallel_size, "--pipeline-parallel-size")

        spec = load_model_spec(model)
        if partition is not None:
            split = pp.check_partition(pp.parse_partition(partition), spec.num_layers)
            if stages_asked is not None and stages_asked != len(split):
                raise InputError(f"--partition has {len(split)} stages but --pipeline-parallel-size is "
                                 f"{stages_asked}")
        elif stages_asked is not None:
            split = pp.default_partition(spec.num_layers, stages_asked)
        elif profiles:
            split = pp.default_partition(spec.num_layers, len(profiles))
        else:
            raise InputError("no pipeline split given",
                             hint="pass --partition 48,16 (layers per stage) or --pipeline-parallel-size N")
        stages = len(split)
        warnings: list[str] = []

        cards = non_kv = layer_weights = None
        way = "given budget"
        if profiles:
            if len(profiles) != stages:
                raise InputError(f"{len(profiles)} stage profiles for {stages} stages: give one per stage")
            read = [_read_stage_profile(path, i) for i, path in enumerate(profiles)]
            for i, values in enumerate(read):
                if values["partition"] is not None and tuple(values["partition"]) != tuple(split):
                    raise InputError(f"--stage-profile {values['path']} was measured for partition "
                                     f"{','.join(map(str, values['partition']))}, not {','.join(map(str, split))}")
                if values["stage"] is not None and values["stage"] != i:
                    raise InputError(f"--stage-profile {values['path']} measured stage {values['stage']}, "
                                     f"but it is given as stage {i}: list the files in stage order")
                if values["device_kind"] == "cpu":
                    warnings.append(f"stage {i}: {values['path']} was measured on the CPU, not on a CUDA card")
            utils = _per_stage(utilizations, stages, "--util") if utilizations else [
                v["gpu_memory_utilization"] or 0.9 for v in read]
            cards = [pp.StageCard(v["device_name"], v["total_bytes"], u, v["free_bytes_at_start"], "stage profile")
                     for v, u in zip(read, utils)]
            non_kv = [pp.StageNonKv(v["weights_bytes"], v["activation_peak_bytes"], v["non_torch_bytes"],
                                    v["cuda_graph_bytes"],
                                    "measured" if set(v["methods"].values()) == {"measured"} else "mixed",
                                    v["path"], v["methods"]) for v in read]
            layer_weights = pp.estimate_layer_weights_bytes(spec, settings.tensor_parallel_size)
            way = "measured (stage profiles)"
        elif gpu is not None or gpu_memory is not None:
            if gpu is not None:
                from kvadvise.gpus import lookup_gpu

                names = [n.strip() for n in gpu.split(",")]
                if any(not n for n in names):
                    raise InputError(f"--gpu: cannot read {gpu!r} as a comma-separated list of card names")
                found = _per_stage([lookup_gpu(n) for n in names], stages, "--gpu")
                totals = [(g.key, g.total_bytes, "catalog") for g in found]
            else:
                sizes = _per_stage(parse_bytes_list(gpu_memory, what="--gpu-memory"), stages, "--gpu-memory")
                totals = [(None, size, "gpu-memory option") for size in sizes]
            utils = _per_stage(utilizations or [0.9], stages, "--util")
            cards = [pp.StageCard(name, total, u, None, source) for (name, total, source), u in zip(totals, utils)]
            if not (estimate or parameter_counts) and _cuda_device_present():
                raise EnvironmentProblem(
                    "measuring each stage on this machine's CUDA card needs the profile command's --stage path, "
                    "which pp-split does not drive yet",
                    hint="pass --estimate, or run `kvadvise profile --partition ... --stage i --json` per stage "
                         "and give the files with --stage-profile")
            layer_weights = pp.estimate_layer_weights_bytes(spec, settings.tensor_parallel_size)
            non_kv = None
            if not parameter_counts:
                try:
                    non_kv, engine_warnings = _engine_estimates(spec, split, cards, settings, model=model,
                                                                max_num_seqs=seqs, utils=utils)
                    warnings += engine_warnings
                    way = "estimated (estimate engine, per stage)"
                except (ImportError, InputError) as error:
                    warnings.append(f"the estimate engine could not size the stages ({error}); estimated from "
                                    "parameter counts instead")
            if non_kv is None:
                non_kv, layer_weights = pp.estimate_stage_non_kv(
                    spec, split, cards, settings, max_num_batched_tokens=settings.max_num_batched_tokens,
                    max_num_seqs=seqs)
                way = "estimated (parameter counts)"
                warnings.append("non-KV memory estimated from parameter counts (activation, non-torch and CUDA-graph "
                                "terms are rules of thumb): measure with --stage-profile")
        elif budget is None:
            if _cuda_device_present() and not estimate:
                raise EnvironmentProblem(
                    "measuring each stage on this machine's CUDA card needs the profile command's --stage path, "
                    "which pp-split does not drive yet",
                    hint="pass --gpu NAME --estimate, or --stage-profile files from `kvadvise profile --stage i`")
            raise InputError("no card: say which GPU each stage runs on",
                             hint="pass --gpu NAME (one, or one per stage), --gpu-memory 16GiB,32GiB, "
                                  "--stage-profile FILES, or --kv-cache-memory-bytes N to evaluate a budget")
        elif estimate or parameter_counts:
            raise InputError("--estimate needs the cards: pass --gpu NAME or --gpu-memory SIZE")

        if utilizations and cards is None:
            raise InputError("--util needs the cards: pass --gpu, --gpu-memory or --stage-profile")

        plan = pp.plan_pp_split(spec, settings, split, cards=cards, non_kv=non_kv,
                                layer_weights_bytes=layer_weights, kv_cache_memory_bytes=budget)
        warnings += list(plan.warnings)
        inputs = {
            "model": model,
            "partition": list(split),
            "pipeline_parallel_size": stages,
            "gpu": gpu,
            "gpu_memory": gpu_memory,
            "gpu_memory_utilization": utilizations,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "estimate": estimate,
            "parameter_counts": parameter_counts,
            "stage_profiles": profiles or None,
            "kv_cache_memory_bytes": budget,
            "kv_cache_dtype": settings.kv_cache_dtype,
            "block_size": settings.block_size,
            "max_model_len": settings.max_model_len,
            "max_num_batched_tokens": settings.max_num_batched_tokens,
            "max_num_seqs": seqs,
            "vllm_version": settings.vllm_version,
        }
        document = make_document("pp-split", inputs, pp_split_json(plan, way), warnings)
        error = None
        if plan.mode == "memory" and plan.uniform.kv_cache_memory_bytes is None:
            hint = (f"the suggested partition {','.join(map(str, plan.suggestion.partition))} fits"
                    if plan.suggestion else "use larger cards, more stages or a quantized checkpoint")
            error = InputError("the partition does not fit: some stage has no memory left for the KV cache",
                               hint=hint)
        return Outcome(document=document, render=pp_split_renderer(document),
                       tokens=plan.uniform.tokens, concurrency=plan.uniform.max_concurrency, error=error)

    execute(body, json_mode=json_mode, output=output, min_tokens=min_tokens, min_concurrency=min_concurrency)


def register(app: typer.Typer) -> None:
    app.command("pp-split")(pp_split)
