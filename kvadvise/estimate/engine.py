"""`estimate`: the profile's BudgetReport from a config alone, every term estimated, no GPU, no real memory.

One fake-tensor build of the rank's model (kvadvise/profile/build.py, the profile's own builder) feeds
the three traced terms: weights (kvadvise/estimate/weights.py, or the checkpoint's safetensors headers
when it is local), peak activation (activation.py: the runner's dummy run under FakeTensorMode), CUDA
graphs (graphs.py: the decode step at the largest capture size + a per-size figure); non-torch memory is
a documented default by GPU family (graphs.py) unless --non-torch-memory gives it. The advice, the KV
capacity and the `vllm serve` lines come from the very functions `profile` uses (plan/advice.advise,
profile/session.kv_layout_for, budget_option, does_not_fit_error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kvadvise.errors import InputError
from kvadvise.plan.advice import BudgetReport, DeviceInfo, NonKvMemory


@dataclass(frozen=True)
class TargetCard:
    """The card the estimate is for: from the catalog (--gpu) and/or a size (--gpu-memory, --gpu-free)."""

    name: Optional[str]
    total_bytes: int
    free_bytes_at_start: int
    source: str                        # "catalog" or "gpu-memory option"
    family: Optional[str] = None
    catalog_key: Optional[str] = None


def target_card(gpu: Optional[str], gpu_memory_bytes: Optional[int], gpu_free_bytes: Optional[int]) -> TargetCard:
    """--gpu NAME (catalog) or --gpu-memory SIZE (or both: the catalog card with another total)."""
    if gpu is None and gpu_memory_bytes is None:
        from kvadvise.gpus import catalog_names

        raise InputError("name the target card: --gpu NAME or --gpu-memory SIZE",
                         hint="catalog names: " + ", ".join(catalog_names()) + " (`kvadvise gpus`)")
    name = family = key = None
    total = None
    source = "gpu-memory option"
    if gpu is not None:
        from kvadvise.gpus import lookup_gpu

        card = lookup_gpu(gpu)
        name, total, family, key, source = card.device_name, card.total_bytes, card.family, card.key, "catalog"
    if gpu_memory_bytes is not None:
        total = gpu_memory_bytes
        source = "gpu-memory option" if gpu is None else "catalog card, --gpu-memory total"
    assert total is not None
    free = total if gpu_free_bytes is None else gpu_free_bytes
    if free > total:
        raise InputError(f"--gpu-free ({free} bytes) exceeds the card's total ({total} bytes)")
    return TargetCard(name, total, free, source, family, key)


@dataclass(frozen=True)
class EstimateResult:
    report: BudgetReport
    layout: Any
    detail: dict = field(default_factory=dict)   # the `estimate` block of the JSON document
    does_not_fit: Optional[InputError] = None
    weight_buffers: Any = None                   # the vLLM-only part of weights (kvadvise/plan/vllm_buffers.py)


def shape_note(settings: Any, *, non_torch_given: bool) -> Optional[str]:
    """What the estimate of one rank / stage stands for (profile's shape note, reworded for an estimate)."""
    parts = []
    if settings.tensor_parallel_size > 1:
        parts.append(f"one tensor-parallel rank of {settings.tensor_parallel_size} (heads, kv heads, intermediate "
                     "size and vocabulary divided as vLLM shards them)")
    if settings.partition is not None:
        parts.append(f"pipeline stage {settings.stage} of {len(settings.partition)} "
                     f"({settings.partition[settings.stage]} layers)")
    if not parts:
        return None
    note = "estimate of " + " and ".join(parts) + " from the config"
    if settings.tensor_parallel_size > 1 and not non_torch_given:
        note += ("; collective-communication buffers (NCCL / custom all-reduce) are in the non-torch default, "
                 "from a public TP-2 log; give your own with --non-torch-memory if your interconnect differs")
    return note


def checkpoint_dir(spec: Any, warnings: list[str]) -> Optional[Path]:
    """The local checkpoint directory whose safetensors headers give the weights, or None.

    A partial download (model.safetensors.index.json names shards that are not there) is not used: the
    headers would under-count; the meta build counts the whole model instead.
    """
    path = Path(spec.config_path)
    directory = path.parent if path.name == "config.json" else None
    if directory is None or not any(directory.glob("*.safetensors")):
        return None
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError):
            shards = set()
        missing = sorted(name for name in shards if not (directory / name).exists())
        if missing:
            warnings.append(f"the checkpoint in {directory} lacks {len(missing)} of its {len(shards)} safetensors "
                            "shards: weights are counted from the config instead of the headers")
            return None
    return directory


def estimate(spec: Any, settings: Any, card: TargetCard, *, non_torch_bytes: Optional[int] = None,
             shortcut: bool = True, use_checkpoint: bool = True) -> EstimateResult:
    """The BudgetReport for `settings` (a kvadvise.profile.session.ProfileSettings) on `card`."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kvadvise.estimate.activation import build_fake_model, estimate_activation
    from kvadvise.estimate.graphs import GRAPH_ESTIMATE_WARNING, default_non_torch, estimate_graphs
    from kvadvise.estimate.graphs import graph_detail as graph_details
    from kvadvise.estimate.weights import ShardPlan, estimate_weights
    from kvadvise.plan import dummy
    from kvadvise.profile import session
    from kvadvise.profile.build import quiet_transformers, resolve_dtype
    from kvadvise.profile.sampler import sampler_warning

    warnings: list[str] = []
    shape = settings.shard_shape
    dtype = resolve_dtype(spec, settings.dtype)
    tokens, seqs = settings.max_num_batched_tokens, settings.max_num_seqs
    if tokens is None or seqs is None:
        default_tokens, default_seqs = dummy.vllm_default_batch(card.total_bytes, card.name, settings.vllm_version)
        tokens = default_tokens if tokens is None else tokens
        seqs = default_seqs if seqs is None else seqs
    dummy.check_scheduler_limits(tokens, seqs)
    settings, block_warning = session.settings_for_card(settings, spec, card.family)
    if block_warning:
        warnings.append(block_warning)
    plan = dummy.plan_dummy_run(tokens, seqs)

    # ---- one fake-tensor build of this rank's model: shapes, no memory
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with quiet_transformers():
        model = build_fake_model(spec, dtype=dtype, shape=shape, fake_mode=fake_mode)

    # ---- weights (before the activation shortcut drops layers)
    start, stop = shape.layer_range(spec.num_layers)
    whole_plan = ShardPlan(tensor_parallel_size=shape.tensor_parallel_size, layer_start=start, layer_end=stop,
                           first_stage=shape.is_first_stage, last_stage=shape.is_last_stage)
    checkpoint = checkpoint_dir(spec, warnings) if use_checkpoint else None
    extra_files = {}
    quant_path = Path(spec.config_path).parent / "hf_quant_config.json"
    if quant_path.is_file():
        import json

        extra_files["hf_quant_config.json"] = json.loads(quant_path.read_text())
    weights = estimate_weights(dict(spec.raw_config) or dict(spec.text_config), model_dtype=dtype,
                               plan=whole_plan, checkpoint_dir=checkpoint, model=model, model_is_shard=True,
                               num_layers=spec.num_layers, extra_files=extra_files)
    warnings.extend(weights.notes)

    # ---- peak activation: the runner's dummy run under fake tensors
    run_sampler = shape.is_last_stage
    warning = sampler_warning(settings.vllm_version, plan.sampler_rows, spec.vocab_size, settings.model_runner)
    if run_sampler and warning:
        warnings.append(warning)
    # vLLM's first matmul allocates the cuBLAS workspace inside its profile run: part of its activation peak
    cublas, cublas_known = dummy.cublas_workspace_bytes_for_family(card.family)
    if not cublas_known:
        warnings.append(f"the target card's cuBLAS workspace is not known: {cublas} bytes (the largest, "
                        "Hopper/Blackwell figure) counted in the activation peak")
    with quiet_transformers():
        activation = estimate_activation(spec, plan, dtype=dtype, shape=shape, run_sampler=run_sampler,
                                         sampler_rule=settings.sampler_rule, model=model, fake_mode=fake_mode,
                                         shortcut=shortcut, cublas_workspace_bytes=cublas)
    warnings.extend(activation.warnings)
    from kvadvise.plan.fidelity import image_model_warning
    from kvadvise.profile.runner import multimodal_encoder_items

    if shape.is_first_stage and multimodal_encoder_items(model, tokens) is not None:
        warnings.append(image_model_warning())

    # ---- CUDA graphs
    graph_detail: dict[str, Any] = {}
    if settings.enforce_eager:
        graph_bytes, graph_method = 0, "not_applicable"
    else:
        if settings.cuda_graph_sizes and len(settings.cuda_graph_sizes) > 1:
            sizes = sorted(set(settings.cuda_graph_sizes), reverse=True)
        else:
            largest = settings.cuda_graph_sizes[0] if settings.cuda_graph_sizes else None
            sizes = list(dummy.cuda_graph_capture_sizes(seqs, tokens, settings.vllm_version,
                                                        max_capture_size=largest))
        sizes = [s for s in sizes if s <= tokens]
        try:
            with quiet_transformers():
                graphs = estimate_graphs(model, spec, sizes, shape=shape, fake_mode=fake_mode)
            graph_bytes, graph_method = graphs.cuda_graph_bytes, "estimated"
            graph_detail = graph_details(graphs)
            warnings.append(GRAPH_ESTIMATE_WARNING)
        except Exception as error:
            from kvadvise.estimate.graphs import GRAPH_BYTES_PER_SIZE

            graph_bytes, graph_method = GRAPH_BYTES_PER_SIZE * len(sizes), "estimated"
            graph_detail = {"method": "per-size figure only (the decode step could not be traced)",
                            "pool_bytes": None, "bytes_per_size": GRAPH_BYTES_PER_SIZE,
                            "num_sizes": len(sizes), "largest_size": max(sizes) if sizes else None}
            warnings.append(f"the decode step could not be traced under fake tensors "
                            f"({type(error).__name__}): CUDA-graph memory counts the per-size figure only")
    del model

    # ---- non-torch memory
    if non_torch_bytes is not None:
        non_torch, non_torch_method, non_torch_source = non_torch_bytes, "given", "--non-torch-memory"
    else:
        default = default_non_torch(card.family, card.catalog_key, settings.tensor_parallel_size)
        non_torch, non_torch_method, non_torch_source = default.bytes, "estimated", default.source
    # Model Runner V2's own state (computed), which vLLM counts with its non-torch memory; not added to a
    # figure the user gave (read from a log, it holds it already)
    runner_state = session.runner_state_bytes(settings, spec, tokens, seqs) if non_torch_bytes is None else None
    if runner_state:
        non_torch += sum(runner_state.values())

    if card.free_bytes_at_start == card.total_bytes:
        warnings.append("free memory at start is taken as the card's total: on a real card the CUDA context "
                        "(typically 0.3-0.6 GiB) and any other process hold some before vLLM starts, so the 'full' "
                        "value is an upper bound (give --gpu-free); 'fit' does not depend on it")
    memory = NonKvMemory(weights.weights_bytes, activation.activation_peak_bytes, non_torch, graph_bytes,
                         weights_method="estimated", activation_peak_method="estimated",
                         non_torch_method=non_torch_method, cuda_graph_method=graph_method,
                         non_torch_vllm_buffers=runner_state)
    device = DeviceInfo(name=card.name, total_bytes=card.total_bytes, free_bytes_at_start=card.free_bytes_at_start,
                        source=card.source)
    layout = session.kv_layout_for(settings, spec, tokens)
    advice, fit, full, advice_warnings = session.advise_budgets(
        settings, spec, memory, card.total_bytes, card.free_bytes_at_start, layout, tokens, seqs)
    warnings.extend(advice_warnings)
    note = shape_note(settings, non_torch_given=non_torch_bytes is not None)
    if note:
        warnings.append(note)
    resolved = {
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "partition": list(settings.partition) if settings.partition else None,
        "stage": settings.stage,
        "dtype": dtype,
        "kv_cache_dtype": settings.kv_cache_dtype,
        "block_size": layout.block_size if layout is not None else settings.block_size,
        "max_model_len": layout.max_model_len if layout is not None else (
            settings.max_model_len or getattr(spec, "max_model_len", None)),
        "enforce_eager": settings.enforce_eager,
        "vllm_version": settings.vllm_version,
        "model_runner": settings.resolved_model_runner,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
    }
    report = BudgetReport(command="estimate", model_id=settings.model_id, device=device, memory=memory,
                          advice=advice, fit=fit, full=full, max_num_batched_tokens=tokens, max_num_seqs=seqs,
                          settings=resolved, warnings=tuple(warnings))
    detail = {
        "weights": {"source": weights.source, "parameter_bytes": weights.parameter_bytes,
                    "vllm_extra_bytes": weights.vllm_extra_bytes, "vllm_extra": dict(weights.vllm_extra_detail),
                    "hf_buffer_bytes": weights.hf_buffer_bytes,
                    "profile_equivalent_bytes": weights.profile_equivalent_bytes,
                    "quantization": weights.quantization,
                    "quantization_scale_bytes": weights.quantization_scale_bytes},
        "activation": {"method": activation.method, "traced_layers": activation.traced_layers,
                       "total_layers": activation.total_layers, "num_tokens": plan.num_tokens,
                       "num_reqs": plan.num_reqs, "sampler": run_sampler, "cublas_workspace_bytes": cublas},
        "cuda_graphs": graph_detail or None,
        "non_torch": {"source": non_torch_source, "family": card.family},
        "shape_equivalent": note,
    }
    error = None if advice.fits else session.does_not_fit_error(report, settings)
    return EstimateResult(report=report, layout=layout, detail=detail, does_not_fit=error,
                          weight_buffers=weights.vllm_buffers)
