"""`kvadvise pp-split`: per-stage KV budgets for (asymmetric) pipeline parallelism and a better partition.

Where each stage's non-KV terms come from: measured here (a CUDA device and no --estimate: each stage's
shape in turn on that card through the profile session's --stage path, dummy weights, the card released
between stages), --stage-profile files (measured where each stage runs), the estimate engine per stage
shape (--estimate, or cards without a CUDA device), parameter counts (--parameter-counts: no torch), or
nothing (--kv-cache-memory-bytes alone). The measured and engine paths import torch inside the body; the
budget, stage-profile and parameter-count paths are arithmetic only: no torch, no transformers, well under
half a second. The weights of moved layers come from the stages' own weights (less the first/last-stage
extras) where the stages were measured or estimated by the engine, else from parameter counts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Optional

import typer

from kvadvise.commands import _budget_options as opts
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
    # the part of memory.weights_bytes that is vLLM's rotary cache (profiles that add vLLM's weight-time
    # buffers list them in memory.weights_vllm_buffers; older ones hold none): it stays with the stage
    buffers = memory.get("weights_vllm_buffers")
    rotary = buffers.get("rotary cos/sin cache", 0) if isinstance(buffers, dict) else 0
    if not isinstance(rotary, int) or isinstance(rotary, bool) or rotary < 0:
        raise InputError(f"--stage-profile {path}: memory.weights_vllm_buffers has {rotary!r} for the rotary cache, "
                         "not a byte count")
    values["rotary_cache_bytes"] = rotary
    values["gpu_memory_utilization"] = settings.get("gpu_memory_utilization")
    values["partition"] = settings.get("partition")
    values["stage"] = settings.get("stage")
    values["device_name"] = device.get("name")
    values["device_kind"] = device.get("kind")
    values["path"] = path
    return values


def _local_cuda_device():
    """(device, nvml_reader) for this machine's first CUDA device, or None when torch cannot use CUDA.

    Imports torch: called only once a device node was seen (`_cuda_device_present`). Tests replace it
    with a fake caching allocator (tests/fake_device.py).
    """
    from kvadvise.profile import device as devices

    try:
        if not devices.cuda_available():
            return None
    except ImportError:
        return None
    from kvadvise.profile.nvml import read_nvml_for

    return devices.CudaDevice(0), read_nvml_for


def _stage_workload(spec, stage_settings, device):
    """The model side of one stage's measurement: the profile's own workload (dummy weights, the stage's
    layers; embedding on the first stage, final norm, lm_head and sampler on the last)."""
    from kvadvise.profile.session import TorchWorkload

    return TorchWorkload(spec, stage_settings, device, model_path=os.path.dirname(spec.config_path))


def _stage_settings(spec, split, index, settings, *, model: str, max_num_seqs, utilization: float,
                    model_runner: str = "auto"):
    from kvadvise.profile.session import ProfileSettings

    return ProfileSettings(
        model_id=model, load_format="dummy", gpu_memory_utilization=utilization,
        max_num_batched_tokens=settings.max_num_batched_tokens, max_num_seqs=max_num_seqs,
        max_model_len=settings.max_model_len, kv_cache_dtype=settings.kv_cache_dtype,
        block_size=settings.block_size, tensor_parallel_size=settings.tensor_parallel_size,
        partition=tuple(split), stage=index, vllm_version=settings.vllm_version, model_runner=model_runner)


def _rotary_cache_bytes(result) -> int:
    """vLLM's rotary cos/sin cache inside a stage's weights (one per stage that holds layers, however many):
    from the profile's / estimate's `weight_buffers` (kvadvise/plan/vllm_buffers.py), else the estimate's
    weights detail; 0 when neither says."""
    buffers = getattr(result, "weight_buffers", None)
    if buffers is not None and getattr(buffers, "rotary_cache_bytes", None) is not None:
        return int(buffers.rotary_cache_bytes)
    detail = getattr(result, "detail", None) or {}
    return int(((detail.get("weights") or {}).get("vllm_extra") or {}).get("rotary cos/sin cache", 0))


_STAGE_PREFIX = re.compile(r"stage \d+: ")


def _said_once(warnings: list) -> list:
    """Each warning once: a stage's warning that an earlier stage gave (kept under the first stage), or that the
    whole report also gives unprefixed (e.g. the config-file MODEL one: kept unprefixed), is dropped."""
    plain = {w for w in warnings if not _STAGE_PREFIX.match(w)}
    seen: set = set()
    kept = []
    for warning in warnings:
        prefix = _STAGE_PREFIX.match(warning)
        if prefix:
            text = warning[prefix.end():]
            if text in plain or text in seen:
                continue
            seen.add(text)
        kept.append(warning)
    return kept


def _add_stage_warnings(index: int, new: list, warnings: list) -> None:
    """Prefix a stage's warnings with its index (repeats are dropped once the report is assembled: _said_once)."""
    warnings.extend(f"stage {index}: {warning}" for warning in new)


def measure_stages(spec, split, settings, *, model: str, max_num_seqs, utils, device, make_workload,
                   nvml_reader=None, named_cards=None, progress=None, model_runner: str = "auto"):
    """Measure every stage's shape in turn on `device` (the profile session's stage path), card released
    between stages by the session itself (model dropped, cache emptied) on every exit path.

    Returns (cards, non_kv, warnings, extras): extras are each stage's weights that do not move with its
    layers (embedding / final norm / lm_head from the config, and vLLM's rotary cache as the session
    added it). Without named_cards each stage's card is the device as the first
    stage found it (total and free at start: every stage runs on a card like it); with named_cards the
    budgets are for those cards (the session's target) and only the terms are measured here.
    `make_workload(spec, stage_settings, device)` is the model side (tests pass a scripted one).
    """
    from kvadvise.errors import OutOfDeviceMemory
    from kvadvise.plan import pp
    from kvadvise.profile import session

    cards, non_kv, warnings = [], [], []
    extras = list(pp.stage_extra_weights_bytes(spec, len(split), settings.tensor_parallel_size))
    found = None
    first_non_torch = None
    for index in range(len(split)):
        stage_settings = _stage_settings(spec, split, index, settings, model=model, max_num_seqs=max_num_seqs,
                                         utilization=utils[index], model_runner=model_runner)
        target = None
        if named_cards is not None:
            card = named_cards[index]
            target = session.TargetDevice(card.name, card.total_bytes, card.total_bytes, card.source)
        if progress is not None:
            first = sum(split[:index])
            progress(f"measuring stage {index} of {len(split)} (layers {first}-{first + split[index] - 1}) "
                     f"on {device.torch_device}")
        workload = make_workload(spec, stage_settings, device)
        try:
            result = session.run_profile(stage_settings, spec, device, workload, target=target,
                                         nvml_reader=nvml_reader if target is None else None)
        except session.ProfileOutOfMemory as error:
            raise OutOfDeviceMemory(error.phase, f"stage {index}: {error.message}",
                                    hint=(error.hint or "") + "; or plan from estimates: --gpu NAME --estimate"
                                    ) from None
        report = result.report
        memory = report.memory
        extras[index] += _rotary_cache_bytes(result)
        if found is None:
            found = report.device
        terms = {"weights": memory.weights_method, "activation_peak": memory.activation_peak_method,
                 "non_torch": memory.non_torch_method, "cuda_graph": memory.cuda_graph_method}
        non_torch = memory.non_torch_bytes
        stage_warnings = list(report.warnings)
        if first_non_torch is None:
            first_non_torch = non_torch
        elif non_torch < first_non_torch:
            # each vLLM stage is its own process: what the first stage's run loaded once (kernel modules,
            # library handles) a later stage measured in the same process no longer shows
            stage_warnings.append(f"non-torch memory measured {non_torch} bytes, less than stage 0's "
                                  f"{first_non_torch}: one-time driver allocations were already made by an earlier "
                                  "stage in this process; stage 0's figure is used (its own process would make them)")
            non_torch = first_non_torch
        _add_stage_warnings(index, stage_warnings, warnings)
        method = "measured" if set(terms.values()) <= {"measured", "not_applicable"} else "mixed"
        non_kv.append(pp.StageNonKv(memory.weights_bytes, memory.activation_peak_bytes, non_torch,
                                    memory.cuda_graph_bytes, method, device.torch_device, terms))
        if named_cards is not None:
            cards.append(named_cards[index])
        else:
            cards.append(pp.StageCard(found.name, found.total_bytes, utils[index], found.free_bytes_at_start,
                                      device.kind))
    if named_cards is not None:
        warnings.append(f"the non-KV terms were measured on this machine's card ({found.name or 'cuda'}) with "
                        "the named cards' batch defaults; the budgets are for the named cards")
    return cards, non_kv, warnings, extras


def _engine_estimates(spec, split, cards, settings, *, model: str, max_num_seqs, utils, model_runner: str = "auto"):
    """Each stage's non-KV terms from the estimate engine (fake tensors: imports torch), and the weights
    of each stage that do not move with its layers (config extras + the engine's per-stage rotary cache)."""
    from kvadvise.estimate.engine import TargetCard, estimate
    from kvadvise.plan import pp

    result, warnings, extras = [], [], list(pp.stage_extra_weights_bytes(spec, len(split),
                                                                          settings.tensor_parallel_size))
    for index, card in enumerate(cards):
        name, family, key = card.name, None, None
        if card.source == "catalog":
            from kvadvise.gpus import lookup_gpu

            found = lookup_gpu(card.name)
            name, family, key = found.device_name, found.family, found.key
        target = TargetCard(name, card.total_bytes, card.total_bytes, card.source, family, key)
        stage_settings = _stage_settings(spec, split, index, settings, model=model, max_num_seqs=max_num_seqs,
                                         utilization=utils[index], model_runner=model_runner)
        estimated = estimate(spec, stage_settings, target)
        memory = estimated.report
        _add_stage_warnings(index, list(memory.warnings), warnings)
        extras[index] += _rotary_cache_bytes(estimated)
        terms = memory.memory
        result.append(pp.StageNonKv(
            terms.weights_bytes, terms.activation_peak_bytes, terms.non_torch_bytes, terms.cuda_graph_bytes,
            "estimated", "estimate engine",
            {"weights": terms.weights_method, "activation_peak": terms.activation_peak_method,
             "non_torch": terms.non_torch_method, "cuda_graph": terms.cuda_graph_method}))
    return result, warnings, extras


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
        False, "--estimate",
        help="Estimate each stage's non-KV memory from the config (no GPU), even on a CUDA machine."),
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
    model_runner: str = opts.ModelRunnerOption,
    json_mode: bool = JsonOption,
    output: Optional[Path] = OutputOption,
    min_tokens: Optional[int] = MinTokensOption,
    min_concurrency: Optional[float] = MinConcurrencyOption,
) -> None:
    """Per-stage KV budgets for pipeline parallelism: uniform vs proportional, bottleneck, best partition.

    On a machine with a CUDA device each stage is measured on it in turn (dummy weights); elsewhere pass
    --gpu / --gpu-memory (estimated), --stage-profile files, or --kv-cache-memory-bytes.
    """

    def body() -> Outcome:
        from kvadvise.errors import InputError
        from kvadvise.model.spec import load_model_spec
        from kvadvise.plan import pp
        from kvadvise.plan.kv import KvSettings, check_block_size
        from kvadvise.report.common import make_document
        from kvadvise.report.pp_split import infeasible_text, pp_split_json, pp_split_renderer
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
            block_size=check_block_size(parse_positive_int(block_size, "--block-size")),
            max_model_len=parse_positive_int(max_model_len, "--max-model-len"),
            max_num_batched_tokens=parse_positive_int(max_num_batched_tokens, "--max-num-batched-tokens"),
            vllm_version=vllm_version,
        )
        seqs = parse_positive_int(max_num_seqs, "--max-num-seqs")
        from kvadvise.profile.sampler import check_model_runner

        check_model_runner(model_runner, vllm_version)
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

        cards = non_kv = layer_weights = stage_extras = None
        way = "given budget"
        tp = settings.tensor_parallel_size
        named_cards = None
        if gpu is not None or gpu_memory is not None:
            if gpu is not None:
                from kvadvise.gpus import lookup_gpu

                names = [n.strip() for n in gpu.split(",")]
                if any(not n for n in names):
                    raise InputError(f"--gpu: cannot read {gpu!r} as a comma-separated list of card names")
                found = _per_stage([lookup_gpu(n) for n in names], stages, "--gpu")
                totals = [(g.key, g.total_bytes, "catalog", g.family) for g in found]
            else:
                sizes = _per_stage(parse_bytes_list(gpu_memory, what="--gpu-memory"), stages, "--gpu-memory")
                totals = [(None, size, "gpu-memory option", None) for size in sizes]
            utils = _per_stage(utilizations or [0.9], stages, "--util")
            named_cards = [pp.StageCard(name, total, u, None, source, family)
                           for (name, total, source, family), u in zip(totals, utils)]
        # measured here: a CUDA device, no --estimate, and something to plan (cards or none: the local card)
        local = None
        if not profiles and not (estimate or parameter_counts) and (named_cards is not None or budget is None) \
                and _cuda_device_present():
            local = _local_cuda_device()
            if local is None:
                warnings.append("a CUDA device node is present but torch cannot use CUDA: nothing measured here")

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
            stage_extras = [extra + v["rotary_cache_bytes"]
                            for extra, v in zip(pp.stage_extra_weights_bytes(spec, stages, tp), read)]
            way = "measured (stage profiles)"
        elif local is not None:
            from kvadvise.commands._common import stderr_console

            device, nvml_reader = local
            utils = _per_stage(utilizations or [0.9], stages, "--util")
            console = stderr_console()
            cards, non_kv, measured_warnings, stage_extras = measure_stages(
                spec, split, settings, model=model, max_num_seqs=seqs, utils=utils, device=device,
                make_workload=_stage_workload, nvml_reader=nvml_reader, named_cards=named_cards,
                model_runner=model_runner,
                progress=lambda text: console.print(text, markup=False))
            warnings += measured_warnings
            way = "measured (this machine's card, stage by stage)"
        elif named_cards is not None:
            cards = named_cards
            if not parameter_counts:
                try:
                    non_kv, engine_warnings, stage_extras = _engine_estimates(
                        spec, split, cards, settings, model=model, max_num_seqs=seqs, utils=utils,
                        model_runner=model_runner)
                    warnings += engine_warnings
                    way = "estimated (estimate engine, per stage)"
                except (ImportError, InputError) as error:
                    warnings.append(f"the estimate engine could not size the stages ({error}); estimated from "
                                    "parameter counts instead")
            if non_kv is None:
                non_kv, layer_weights = pp.estimate_stage_non_kv(
                    spec, split, cards, settings, max_num_batched_tokens=settings.max_num_batched_tokens,
                    max_num_seqs=seqs, model_runner=model_runner)
                way = "estimated (parameter counts)"
                warnings.append("non-KV memory estimated from parameter counts (the activation is the estimate "
                                "engine's analytic formula; non-torch and CUDA-graph terms are rules of thumb): "
                                "measure with --stage-profile")
                if any(card.family is None for card in cards):
                    warnings.append("a card's family is not known (--gpu-memory): its cuBLAS workspace is counted "
                                    "as the largest, 32 MiB Hopper/Blackwell figure")
        elif budget is None:
            raise InputError("no card: say which GPU each stage runs on",
                             hint="pass --gpu NAME (one, or one per stage), --gpu-memory 16GiB,32GiB, "
                                  "--stage-profile FILES, or --kv-cache-memory-bytes N to evaluate a budget")
        elif estimate or parameter_counts:
            raise InputError("--estimate needs the cards: pass --gpu NAME or --gpu-memory SIZE")

        # what moves with a layer: its share of the stages' own (measured / engine) weights where known
        layer_method, layer_source = "estimated", "parameter counts"
        if non_kv is not None and layer_weights is None:
            counted = pp.estimate_layer_weights_bytes(spec, tp)
            layer_weights, kept = pp.layer_weights_from_stages(
                counted, split, [m.weights_bytes for m in non_kv], stage_extras)
            measured_weights = all((m.term_methods or {}).get("weights", m.method) == "measured" for m in non_kv)
            layer_method = "measured" if measured_weights else "estimated"
            layer_source = ("each stage's " + ("measured" if measured_weights else "estimated") + " weights less "
                            "what stays on it (embedding / final norm / lm_head from the config, vLLM's rotary "
                            "cache), shared among its layers by parameter count")
            if kept:
                layer_method = "mixed"
                warnings.append(f"stage(s) {', '.join(map(str, kept))}: weights not above the embedding / lm_head "
                                "extras; their layers' weights are taken from parameter counts")
        elif layer_weights is not None:
            layer_source = "parameter counts"

        if utilizations and cards is None:
            raise InputError("--util needs the cards: pass --gpu, --gpu-memory or --stage-profile")

        plan = pp.plan_pp_split(spec, settings, split, cards=cards, non_kv=non_kv,
                                layer_weights_bytes=layer_weights, kv_cache_memory_bytes=budget,
                                layer_weights_method=layer_method, layer_weights_source=layer_source)
        warnings = _said_once(warnings + list(plan.warnings))
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
            "model_runner": model_runner,
        }
        document = make_document("pp-split", inputs, pp_split_json(plan, way), warnings)
        error = None
        if plan.feasible is False:
            suggestion = plan.suggestion
            if suggestion is None:
                hint = "use larger cards, more stages or a quantized checkpoint"
            else:
                which = ("this partition" if suggestion.already_optimal
                         else f"partition {','.join(map(str, suggestion.partition))}")
                hint = (f"{which} fits with --kv-cache-memory-bytes {suggestion.capacity.kv_cache_memory_bytes} "
                        "(see the report)")
            error = InputError(infeasible_text(plan), hint=hint)
        return Outcome(document=document, render=pp_split_renderer(document),
                       tokens=plan.uniform.tokens, concurrency=plan.uniform.max_concurrency, error=error)

    execute(body, json_mode=json_mode, output=output, min_tokens=min_tokens, min_concurrency=min_concurrency)


def register(app: typer.Typer) -> None:
    app.command("pp-split")(pp_split)
