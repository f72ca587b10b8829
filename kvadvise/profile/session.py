"""The profile session: vLLM's memory profile, phase by phase, on a device passed in.

Mirrors vLLM 0.10.2 v1/worker/gpu_worker.py (init_device, determine_available_memory,
compile_or_warm_up_model) and utils/__init__.py (MemorySnapshot, memory_profiling):
1. baseline: initialise the device (its context; no cuBLAS handle, see CudaDevice.init), then snapshot;
2. load: weights = allocated-bytes growth across building the model (the HF model's tensors) + vLLM's
   weight-time buffers that the HF model lacks (rotary cos/sin caches, vocabulary padding), computed from
   the config by kvadvise/plan/vllm_buffers.py, the same source `estimate` uses; reported as a sub-line;
3. profile run: empty the cache, reset the peak, snapshot; one dummy max-batch forward + sampler; empty the
   cache, snapshot; activation peak = peak allocated during the run - allocated before it (on the host,
   with the target card's cuBLAS workspace, which vLLM's first matmul allocates inside its profile run);
4. non-torch = growth of (total - free) - reserved from the baseline to after the run; on the host, where
   it cannot be measured, estimate's default for the target card's family (kvadvise/estimate/graphs.py);
5. CUDA graphs (not with enforce_eager): free-memory drop across capturing the decode step for every
   capture size, largest first into one shared pool, measured after the static buffers it needs (inputs and
   a minimal static KV cache the step's attention writes and reads: in no term, as vLLM's KV cache); on the
   host, estimate's figure (the same decode step traced, + a per-size figure: estimate/graphs.py);
6. advice: vLLM's suggestion line (plan/advice.py) and the KV capacity each value buys (plan/kv.py).
Device memory is released on every exit path. Knows nothing about text: report/budget.py renders.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol, Sequence

from kvadvise.errors import EnvironmentProblem, InputError, OutOfDeviceMemory
from kvadvise.plan.advice import (Advice, BudgetOption, BudgetReport, DeviceBudget, DeviceInfo, NonKvMemory,
                                  served_model_name,
                                  advise, vllm_serve_command)
from kvadvise.plan.dummy import check_scheduler_limits
# message text only: byte-to-GiB conversion lives in report/
from kvadvise.report.common import gib
from kvadvise.profile.device import CapturedGraphs, Device, MemorySnapshot, StepFactory, take_snapshot

PHASES = ("baseline", "load", "profile_run", "cuda_graphs")


# ------------------------------------------------------------------ inputs --------------------------------

@dataclass(frozen=True)
class ProfileSettings:
    """What the user asked for, as resolved by the command (no typer objects)."""

    model_id: str
    load_format: str = "auto"                  # "auto" (checkpoint) or "dummy" (from the config)
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: Optional[str] = None
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: Optional[int] = None   # None = vLLM's default for the device
    max_num_seqs: Optional[int] = None
    max_model_len: Optional[int] = None
    kv_cache_dtype: str = "auto"
    block_size: Optional[int] = None
    enforce_eager: bool = False
    cuda_graph_sizes: Optional[tuple[int, ...]] = None
    tensor_parallel_size: int = 1
    partition: Optional[tuple[int, ...]] = None
    stage: Optional[int] = None
    vllm_version: str = "0.11"
    model_runner: str = "auto"                  # vLLM's model runner: auto (the version's default), v1, v2
    run_sampler: Optional[bool] = None          # None: on the last pipeline stage only (as vLLM)

    def __post_init__(self) -> None:
        from kvadvise.profile.sampler import check_model_runner

        check_model_runner(self.model_runner, self.vllm_version)

    @property
    def sampler_rule(self) -> str:
        """The dummy sampler mirrored: "0.11" (the V1 runner's) or "0.33" (Model Runner V2's)."""
        from kvadvise.profile.sampler import sampler_rule

        return sampler_rule(self.vllm_version, self.model_runner)[0]

    @property
    def resolved_model_runner(self) -> str:
        from kvadvise.profile.sampler import default_model_runner

        return default_model_runner(self.vllm_version) if self.model_runner == "auto" else self.model_runner

    @property
    def pipeline_parallel_size(self) -> int:
        return 1 if self.partition is None else len(self.partition)

    @property
    def shard_shape(self) -> Any:
        """The rank these settings measure (kvadvise.profile.build.ShardShape: TP size, partition, stage)."""
        from kvadvise.profile.build import ShardShape

        return ShardShape(tensor_parallel_size=self.tensor_parallel_size, partition=self.partition, stage=self.stage)


@dataclass(frozen=True)
class TargetDevice:
    """The card the advice is for, when it is not the device measured (CPU mode)."""

    name: Optional[str]
    total_bytes: int
    free_bytes_at_start: int
    source: str                                # "catalog", "gpu-memory option", "host memory"
    family: Optional[str] = None               # catalog family (kvadvise/gpus.py): non-torch and cuBLAS defaults
    catalog_key: Optional[str] = None


class Workload(Protocol):
    """The model-side half of a profile: what runs on the device between the measurements."""

    def load(self) -> Optional[int]:
        """Build the model on the device; return the bytes of its tensors (unique storages), if known."""

    def prepare_dummy_run(self, num_tokens: int, num_seqs: int) -> None:
        """Allocate what vLLM allocates before its profile run (persistent input buffers); not measured."""

    def dummy_run(self, num_tokens: int, num_seqs: int) -> None:
        """vLLM's profile run: one max-batch forward (no KV cache) and the sampler; frees what it made."""

    def prepare_graph_capture(self, sizes: Sequence[int]) -> tuple[StepFactory, int]:
        """Allocate what capture needs (static buffers); return a step factory and those buffers' bytes."""

    def eager_decode_peak(self, device: Device, size: int) -> int:
        """Peak allocated-bytes increase of one eager decode step of `size` sequences (graph fallback)."""

    # optional: vllm_weight_buffers() -> kvadvise.plan.vllm_buffers.VllmWeightBuffers (after load), and
    # estimate_cuda_graphs(sizes) -> kvadvise.estimate.graphs.GraphEstimate (hosts without CUDA graphs)

    def release(self) -> None:
        """Drop the model and everything the workload holds on the device."""


# ------------------------------------------------------------------ results -------------------------------

@dataclass(frozen=True)
class PhaseRecord:
    """One phase as measured: snapshots around it and what it yielded."""

    name: str
    before: Optional[MemorySnapshot] = None
    after: Optional[MemorySnapshot] = None
    result_bytes: Optional[int] = None
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Measurements:
    """The four terms as far as measured (None = not reached), and how each was obtained."""

    weights_bytes: Optional[int] = None
    activation_peak_bytes: Optional[int] = None
    non_torch_bytes: Optional[int] = None
    cuda_graph_bytes: Optional[int] = None
    weights_method: str = "measured"
    activation_peak_method: str = "measured"
    non_torch_method: str = "measured"
    cuda_graph_method: str = "measured"
    weight_buffers: Any = None           # kvadvise.plan.vllm_buffers.VllmWeightBuffers, part of weights_bytes
    non_torch_buffers: Any = None        # vLLM's runner state inside non_torch_bytes (runner_state_bytes), by reason

    def complete(self) -> bool:
        return None not in (self.weights_bytes, self.activation_peak_bytes, self.non_torch_bytes,
                            self.cuda_graph_bytes)

    def non_kv(self) -> NonKvMemory:
        assert self.complete()
        return NonKvMemory(self.weights_bytes, self.activation_peak_bytes, self.non_torch_bytes,
                           self.cuda_graph_bytes, self.weights_method, self.activation_peak_method,
                           self.non_torch_method, self.cuda_graph_method, self.non_torch_buffers)


@dataclass(frozen=True)
class PartialProfile:
    """What was measured before a phase failed (the JSON of an out-of-memory exit)."""

    settings: ProfileSettings
    device: Optional[DeviceInfo]
    measurements: Measurements
    phases: tuple[PhaseRecord, ...]
    failed_phase: str
    max_num_batched_tokens: Optional[int]
    max_num_seqs: Optional[int]
    warnings: tuple[str, ...]
    layout: Any = None                 # the KV layout, once the batch settings were known


class ProfileOutOfMemory(OutOfDeviceMemory):
    """Out of device memory in a phase; carries the figures measured so far."""

    def __init__(self, phase: str, message: str, partial: PartialProfile, hint: Optional[str] = None) -> None:
        super().__init__(phase, message, hint)
        self.partial = partial


@dataclass(frozen=True)
class ProfileResult:
    report: BudgetReport
    layout: Any                        # kvadvise.plan.kv.KvLayout of the measured rank
    phases: tuple[PhaseRecord, ...]
    shape_note: Optional[str]          # set when a TP/PP rank was measured shape-equivalently
    does_not_fit: Optional[InputError] = None
    weight_buffers: Any = None         # the vLLM-only part of memory.weights_bytes (computed, not measured)


# ------------------------------------------------------------------ helpers -------------------------------

def stage_layers(partition: Sequence[int], stage: int) -> tuple[int, ...]:
    """Layer indices of pipeline stage `stage` for a VLLM_PP_LAYER_PARTITION-style list of layer counts."""
    start = sum(partition[:stage])
    return tuple(range(start, start + partition[stage]))


def shape_note(settings: ProfileSettings) -> Optional[str]:
    """What a one-GPU measurement of one rank of a parallel deployment stands for, and what it misses."""
    parts = []
    if settings.tensor_parallel_size > 1:
        parts.append(f"one tensor-parallel rank of {settings.tensor_parallel_size} (heads, kv heads, "
                     f"intermediate size and vocabulary divided as vLLM shards them)")
    if settings.partition is not None:
        parts.append(f"pipeline stage {settings.stage} of {len(settings.partition)} "
                     f"({settings.partition[settings.stage]} layers)")
    if not parts:
        return None
    return ("shape-equivalent measurement of " + " and ".join(parts) + " on one device with dummy weights; "
            "it leaves out collective-communication buffers (NCCL / custom all-reduce) and their non-torch "
            "memory, which a real multi-GPU run adds")


def does_not_fit_error(report: BudgetReport, settings: ProfileSettings) -> InputError:
    """Exit 2 when nothing is left for the KV cache; the report is still printed."""
    short = -report.advice.fit_kv_cache_memory_bytes
    helps = []
    if settings.kv_cache_dtype == "auto":
        helps.append("an fp8 KV cache (--kv-cache-dtype fp8)")
    helps.append(f"a smaller --max-num-batched-tokens (now {report.max_num_batched_tokens})")
    helps.append(f"tensor parallelism (--tensor-parallel-size {max(2, settings.tensor_parallel_size * 2)})")
    if settings.gpu_memory_utilization < 0.95:
        helps.append("a higher --util")
    return InputError(f"does not fit: short by {gib(short)} ({short} bytes) for the KV cache at "
                      f"--util {settings.gpu_memory_utilization}",
                      hint="what would help: " + ", ".join(helps))


# ------------------------------------------------------------------ the session ---------------------------

class ProgressHook(Protocol):
    """Told `(phase, "start")`, then `(phase, "done")` or `(phase, "skipped: why")`."""

    def __call__(self, phase: str, state: str) -> None: ...


def _noop_progress(phase: str, state: str) -> None:
    return None


@dataclass
class _State:
    phases: list[PhaseRecord] = field(default_factory=list)
    measurements: Measurements = field(default_factory=Measurements)
    warnings: list[str] = field(default_factory=list)
    device_info: Optional[DeviceInfo] = None
    max_num_batched_tokens: Optional[int] = None
    max_num_seqs: Optional[int] = None
    layout: Any = None


def run_profile(settings: ProfileSettings, spec: Any, device: Device, workload: Workload, *,
                target: Optional[TargetDevice] = None,
                default_batch: Optional[Callable[[int, Optional[str]], tuple[int, int]]] = None,
                graph_sizes: Optional[Callable[[int, int], Sequence[int]]] = None,
                nvml_reader: Optional[Callable[[Device], Any]] = None,
                progress: ProgressHook = _noop_progress) -> ProfileResult:
    """Measure the four terms on `device` running `workload`, then advise. Releases the device on every path.

    target: on CPU, the card the advice is for. default_batch(total_bytes, device_name) -> (tokens, seqs)
    and graph_sizes(max_num_seqs, max_num_batched_tokens) default to kvadvise.plan.dummy's vLLM rules.
    """
    state = _State()
    phase = "baseline"
    try:
        # ---- 1. baseline: after init, the same moment vLLM takes its start-up snapshot
        progress(phase, "start")
        device.init()
        device.empty_cache()
        device.reset_peak_memory_stats()
        baseline = take_snapshot(device)
        state.phases.append(PhaseRecord("baseline", after=baseline))
        state.device_info = _device_info(device, baseline, target, nvml_reader, state.warnings)
        total_for_defaults = state.device_info.total_bytes
        tokens, seqs = settings.max_num_batched_tokens, settings.max_num_seqs
        if tokens is None or seqs is None:
            default_tokens, default_seqs = (default_batch or _vllm_default_batch(settings))(
                total_for_defaults, state.device_info.name)
            tokens = default_tokens if tokens is None else tokens
            seqs = default_seqs if seqs is None else seqs
        check_scheduler_limits(tokens, seqs)
        state.max_num_batched_tokens, state.max_num_seqs = tokens, seqs
        settings, block_warning = settings_for_card(settings, spec, _target_family(target, state.device_info.name))
        if block_warning:
            state.warnings.append(block_warning)
        # the KV layout is arithmetic: settings it rejects fail here, before the long phases
        state.layout = kv_layout_for(settings, spec, tokens)
        progress(phase, "done")

        # ---- 2. load: weights = allocated growth across building the model
        phase = "load"
        progress(phase, "start")
        before_load = take_snapshot(device)
        tensor_bytes = workload.load()
        after_load = take_snapshot(device)
        if device.measures_driver_memory or tensor_bytes is None:
            measured = after_load.allocated_bytes - before_load.allocated_bytes
        else:
            measured = tensor_bytes   # host: the loaded tensors' own bytes (no caching allocator to read)
        buffers_of = getattr(workload, "vllm_weight_buffers", None)
        buffers = buffers_of() if buffers_of is not None else None
        extra = buffers.total_bytes if buffers is not None else 0
        state.measurements = replace(state.measurements, weights_bytes=measured + extra, weight_buffers=buffers)
        state.phases.append(PhaseRecord("load", before_load, after_load, measured + extra,
                                        {"tensor_bytes": tensor_bytes, "measured_bytes": measured,
                                         "vllm_buffers_bytes": extra}))
        progress(phase, "done")

        # ---- 3. profile run: mirrors vLLM 0.10.2 utils/__init__.py memory_profiling
        phase = "profile_run"
        progress(phase, "start")
        workload.prepare_dummy_run(tokens, seqs)
        device.empty_cache()
        device.reset_peak_memory_stats()
        before_run = take_snapshot(device)
        workload.dummy_run(tokens, seqs)
        state.warnings.extend(getattr(workload, "warnings", ()))
        device.empty_cache()
        after_run = take_snapshot(device)
        # torch_peak_increase = after.torch_peak - before.torch_peak (before.torch_peak == allocated after reset)
        activation = after_run.peak_allocated_bytes - before_run.peak_allocated_bytes
        state.measurements = replace(state.measurements, activation_peak_bytes=activation)
        state.phases.append(PhaseRecord("profile_run", before_run, after_run, activation,
                                        {"num_tokens": tokens, "num_reqs": min(tokens, seqs)}))

        # ---- 4. non-torch: growth of (total - free) - reserved since the baseline
        if device.measures_driver_memory:
            non_torch = after_run.non_torch_bytes - baseline.non_torch_bytes
            state.measurements = replace(state.measurements, non_torch_bytes=non_torch)
            if non_torch < 0:
                state.warnings.append(f"non-torch memory shrank by {-non_torch} bytes since the start-up "
                                      "snapshot (another process freed memory?); counted as measured, as vLLM does")
        else:
            _host_non_torch(settings, target, state)
        runner_state = runner_state_bytes(settings, spec, tokens, seqs)
        if runner_state:
            state.measurements = replace(
                state.measurements, non_torch_buffers=runner_state,
                non_torch_bytes=state.measurements.non_torch_bytes + sum(runner_state.values()))
        progress(phase, "done")

        # ---- 5. CUDA graphs
        phase = "cuda_graphs"
        progress(phase, "start")
        skipped = None
        if settings.enforce_eager:
            state.measurements = replace(state.measurements, cuda_graph_bytes=0, cuda_graph_method="not_applicable")
            state.phases.append(PhaseRecord("cuda_graphs", detail={"skipped": "enforce_eager"}))
            skipped = "--enforce-eager"
        elif not device.supports_cuda_graphs:
            _host_graphs(workload, _capture_sizes(settings, graph_sizes, seqs, tokens), state)
        else:
            _measure_graphs(device, workload, _capture_sizes(settings, graph_sizes, seqs, tokens), state)
        progress(phase, "done" if skipped is None else f"skipped: {skipped}")
    except Exception as error:
        if isinstance(error, OutOfDeviceMemory) or device.is_out_of_memory(error):
            # the traceback's frames hold the failed phase's tensors: drop them so release() can free them
            traceback.clear_frames(error.__traceback__)
            partial = PartialProfile(settings, state.device_info, state.measurements, tuple(state.phases),
                                     phase, state.max_num_batched_tokens, state.max_num_seqs,
                                     tuple(state.warnings), state.layout)
            raise ProfileOutOfMemory(phase, f"out of device memory during the {_phase_words(phase)} phase",
                                     partial, hint=_oom_hint(phase, settings)) from error
        raise
    finally:
        _release(device, workload)

    return _advise(settings, spec, state, target)


def runner_state_bytes(settings: ProfileSettings, spec: Any, tokens: int, seqs: int) -> Optional[dict]:
    """vLLM's model-runner state that this process does not allocate but vLLM counts in its non-KV memory:
    Model Runner V2's request, input and sampler tensors (kvadvise/plan/vllm_buffers.py), computed from the
    batch settings; None for the V1 runner (its persistent buffers are in no term of vLLM's 0.10.2-0.12 sizing)."""
    if settings.resolved_model_runner != "v2":
        return None
    from kvadvise.plan.vllm_buffers import model_runner_v2_state_bytes

    return model_runner_v2_state_bytes(seqs, tokens, spec.vocab_size, last_stage=settings.shard_shape.is_last_stage)


def _capture_sizes(settings: ProfileSettings, graph_sizes: Optional[Callable[[int, int], Sequence[int]]],
                   seqs: int, tokens: int) -> list[int]:
    if settings.cuda_graph_sizes and len(settings.cuda_graph_sizes) > 1:
        sizes = list(settings.cuda_graph_sizes)        # an explicit list, as vLLM takes it
    else:
        sizes = list((graph_sizes or _vllm_graph_sizes(settings))(seqs, tokens))
    return sorted({s for s in sizes if s <= tokens}, reverse=True)


def _host_non_torch(settings: ProfileSettings, target: Optional[TargetDevice], state: _State) -> None:
    """Non-torch memory cannot be measured on the host: estimate's default for the target card (one code path
    with `kvadvise estimate`), so that "fit" is not above vLLM's by that term."""
    from kvadvise.estimate.graphs import default_non_torch

    family = target.family if target is not None else None
    key = target.catalog_key if target is not None else None
    default = default_non_torch(family, key, settings.tensor_parallel_size)
    state.measurements = replace(state.measurements, non_torch_bytes=default.bytes, non_torch_method="estimated")
    state.warnings.append(f"non-torch memory (CUDA context growth, cuBLAS handles, NCCL) cannot be measured on the "
                          f"host: ESTIMATED as {default.bytes} bytes ({gib(default.bytes)}), the {default.source}, "
                          "as `kvadvise estimate` does; the card's own figure typically lies in 0.05-1.5 GiB")


def _host_graphs(workload: Workload, sizes: list[int], state: _State) -> None:
    """CUDA graphs cannot be captured on the host: estimate's figure (the largest decode step traced on the
    host's model + a per-size figure, kvadvise/estimate/graphs.py), marked estimated."""
    from kvadvise.estimate.graphs import GRAPH_BYTES_PER_SIZE, GRAPH_ESTIMATE_WARNING, graph_detail

    estimate_of = getattr(workload, "estimate_cuda_graphs", None)
    if not sizes:
        state.measurements = replace(state.measurements, cuda_graph_bytes=0, cuda_graph_method="estimated")
        state.phases.append(PhaseRecord("cuda_graphs", detail={"sizes": []}))
        return
    graphs = None
    if estimate_of is not None:
        try:
            graphs = estimate_of(sizes)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as error:   # the decode step cannot run on this architecture: as `estimate` does
            state.warnings.append(f"the decode step could not be traced on the host ({type(error).__name__}): "
                                  "CUDA-graph memory counts the per-size figure only")
    if graphs is not None:
        detail = dict(graph_detail(graphs), sizes=sizes)
        graph_bytes = graphs.cuda_graph_bytes
    else:   # no decode step to trace: the per-size figure alone
        graph_bytes = GRAPH_BYTES_PER_SIZE * len(sizes)
        detail = {"method": "per-size figure only", "sizes": sizes}
    state.measurements = replace(state.measurements, cuda_graph_bytes=graph_bytes, cuda_graph_method="estimated")
    state.phases.append(PhaseRecord("cuda_graphs", result_bytes=graph_bytes, detail=detail))
    state.warnings.append("CUDA graphs cannot be captured on the host: " + GRAPH_ESTIMATE_WARNING
                          + " (or add --enforce-eager if vLLM will run without graphs)")


def _phase_words(phase: str) -> str:
    return {"baseline": "device initialisation", "load": "model loading", "profile_run": "dummy max-batch run",
            "cuda_graphs": "CUDA graph capture"}.get(phase, phase)


def _oom_hint(phase: str, settings: ProfileSettings) -> str:
    if phase == "load":
        return ("the weights alone do not fit this device: try --tensor-parallel-size 2 (one rank's shard) or "
                "a quantized checkpoint; `kvadvise estimate` needs no device")
    if phase == "profile_run":
        return "lower --max-num-batched-tokens / --max-num-seqs, or measure one TP rank with --tensor-parallel-size"
    if phase == "cuda_graphs":
        return "lower --cuda-graph-sizes or pass --enforce-eager"
    return "free the device (other processes hold memory) or pick another with --device cuda:N"


def _release(device: Device, workload: Workload) -> None:
    """Drop the model and return every cached block to the driver; never masks the original error."""
    try:
        workload.release()
    finally:
        try:
            release_workspaces = getattr(device, "release_workspaces", None)
            if release_workspaces is not None:
                release_workspaces()
            device.empty_cache()
        finally:
            close = getattr(device, "close", None)
            if close is not None:
                close()


def _measure_graphs(device: Device, workload: Workload, sizes: list[int], state: _State) -> None:
    """Free-memory drop across capture, after the static buffers capture needs are allocated (mirrors vLLM
    0.10.2 v1/worker/gpu_model_runner.py capture_model: start_free_gpu_memory - end_free_gpu_memory)."""
    if not sizes:
        state.measurements = replace(state.measurements, cuda_graph_bytes=0)
        state.phases.append(PhaseRecord("cuda_graphs", detail={"sizes": []}))
        return
    device.empty_cache()
    captured: Optional[CapturedGraphs] = None
    try:
        make_step, static_bytes = workload.prepare_graph_capture(sizes)
        # the snapshot comes after the static buffers (vLLM allocates its persistent buffers before profiling,
        # so they are in none of its terms): their bytes AND the segment rounding they caused stay out, which
        # subtracting their tensor bytes from a drop measured before them would not do
        before = take_snapshot(device)
        captured = device.capture_graphs(make_step, sizes)
        after = take_snapshot(device)
        graphs = before.free_bytes - after.free_bytes
        state.measurements = replace(state.measurements, cuda_graph_bytes=graphs)
        state.phases.append(PhaseRecord("cuda_graphs", before, after, graphs,
                                        {"sizes": sizes, "static_buffers_bytes": static_bytes,
                                         "graphs": captured.count}))
    except Exception as error:
        if device.is_out_of_memory(error):
            raise
        # The architecture could not be captured: estimate the shared pool as the eager peak of the largest
        # decode step (the pool must hold at least that; smaller sizes reuse it).
        if captured is not None:
            captured.release()
            captured = None
        device.empty_cache()
        estimate = workload.eager_decode_peak(device, sizes[0])
        state.measurements = replace(state.measurements, cuda_graph_bytes=estimate, cuda_graph_method="estimated")
        state.phases.append(PhaseRecord("cuda_graphs", result_bytes=estimate,
                                        detail={"sizes": sizes, "fallback": f"{type(error).__name__}: {error}"}))
        state.warnings.append(f"CUDA graph capture failed for this architecture ({type(error).__name__}); graph "
                              f"memory is ESTIMATED as the eager peak of the largest decode step ({sizes[0]} "
                              "sequences), not measured")
    finally:
        if captured is not None:
            captured.release()
        device.empty_cache()


def _device_info(device: Device, baseline: MemorySnapshot, target: Optional[TargetDevice],
                 nvml_reader: Optional[Callable[[Device], Any]], warnings: list[str]) -> DeviceInfo:
    if target is not None:
        return DeviceInfo(name=target.name, total_bytes=target.total_bytes,
                          free_bytes_at_start=target.free_bytes_at_start, source=target.source)
    info = nvml_reader(device) if nvml_reader is not None else None
    name = device.name()
    driver = mig = other = None
    if info is not None:
        from kvadvise.profile.nvml import free_memory_disagrees

        driver, mig, other = info.driver_version, info.mig_mode, info.other_processes_bytes
        name = name or info.name
        if info.other_processes and getattr(info, "own_process_listed", True) is False:
            # inside a container NVML lists host PIDs: this process is probably one of those listed
            warnings.append(f"NVML lists {len(info.other_processes)} process(es) on this GPU but none under this "
                            "process's PID (a container's PID namespace?): one of them is probably this one; any "
                            "other makes 'full' smaller by what it holds")
        elif info.other_processes:
            held = "unknown bytes" if other is None else f"{other} bytes ({gib(other)})"
            warnings.append(f"{len(info.other_processes)} other process(es) hold {held} on this GPU: "
                            "'full' is smaller by what they hold, and changes when they exit")
        if free_memory_disagrees(info.free_bytes, baseline.free_bytes):
            warnings.append(f"NVML reports {info.free_bytes} bytes free but CUDA {baseline.free_bytes} "
                            "(more than 1% apart): vLLM uses CUDA's figure, and so do we")
        if mig:
            warnings.append("MIG mode is enabled: figures are for the MIG instance CUDA exposes")
    return DeviceInfo(name=name, total_bytes=baseline.total_bytes, free_bytes_at_start=baseline.free_bytes,
                      source="cuda", driver_version=driver, mig_mode=mig, other_processes_bytes=other)


def _vllm_default_batch(settings: ProfileSettings) -> Callable[[int, Optional[str]], tuple[int, int]]:
    def default(total_bytes: int, device_name: Optional[str]) -> tuple[int, int]:
        from kvadvise.plan import dummy

        return dummy.vllm_default_batch(total_bytes, device_name, vllm_version=settings.vllm_version)
    return default


def _vllm_graph_sizes(settings: ProfileSettings) -> Callable[[int, int], Sequence[int]]:
    # one --cuda-graph-sizes value is the largest size, with vLLM's pattern below it (vLLM 0.11 semantics)
    largest = settings.cuda_graph_sizes[0] if settings.cuda_graph_sizes else None

    def sizes(max_num_seqs: int, max_num_batched_tokens: int) -> Sequence[int]:
        from kvadvise.plan import dummy

        return dummy.cuda_graph_capture_sizes(max_num_seqs, max_num_batched_tokens,
                                              vllm_version=settings.vllm_version, max_capture_size=largest)
    return sizes


# ------------------------------------------------------------------ advice -------------------------------

def _advise(settings: ProfileSettings, spec: Any, state: _State, target: Optional[TargetDevice]) -> ProfileResult:
    assert state.device_info is not None and state.max_num_batched_tokens is not None
    memory = state.measurements.non_kv()
    layout = state.layout
    advice, fit, full, advice_warnings = advise_budgets(
        settings, spec, memory, state.device_info.total_bytes, state.device_info.free_bytes_at_start, layout,
        state.max_num_batched_tokens, state.max_num_seqs)
    state.warnings.extend(advice_warnings)
    note = shape_note(settings)
    if note:
        state.warnings.append(note)
    resolved = {
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "partition": list(settings.partition) if settings.partition else None,
        "stage": settings.stage,
        "load_format": settings.load_format,
        "dtype": settings.dtype if settings.dtype != "auto" else getattr(spec, "dtype", None),
        "kv_cache_dtype": settings.kv_cache_dtype,
        "block_size": layout.block_size,
        "max_model_len": layout.max_model_len,
        "enforce_eager": settings.enforce_eager,
        "vllm_version": settings.vllm_version,
        "model_runner": settings.resolved_model_runner,
        "device_kind": "cuda" if target is None else "cpu",
    }
    report = BudgetReport(command="profile", model_id=settings.model_id, device=state.device_info,
                          memory=memory, advice=advice, fit=fit, full=full,
                          max_num_batched_tokens=state.max_num_batched_tokens, max_num_seqs=state.max_num_seqs,
                          settings=resolved, warnings=tuple(state.warnings))
    error = None if advice.fits else does_not_fit_error(report, settings)
    return ProfileResult(report=report, layout=layout, phases=tuple(state.phases), shape_note=note,
                         does_not_fit=error, weight_buffers=state.measurements.weight_buffers)


# mirrors vLLM 0.11 platforms/cuda.py get_attn_backend_cls (shared/reference/vllm-accounting.md section 4): on
# Blackwell the default MLA backend is CUTLASS MLA, which forces block_size 128 (FlashMLA, the Hopper default,
# forces 64: plan/kv.py); which later releases keep CUTLASS MLA as the SM100 default was not checked
BLACKWELL_MLA_BLOCK_SIZE = 128


def _target_family(target: Optional[TargetDevice], device_name: Optional[str]) -> Optional[str]:
    """The catalog family of the card the advice is for: the target's, else the measured device's by name."""
    if target is not None:
        return target.family
    if not device_name:
        return None
    from kvadvise.gpus import match_device_name

    card = match_device_name(device_name)
    return card.family if card is not None else None


def settings_for_card(settings: ProfileSettings, spec: Any, family: Optional[str]) -> tuple[ProfileSettings,
                                                                                         Optional[str]]:
    """The settings with vLLM's card-dependent defaults filled in, and a warning naming each one.

    Today one: an MLA model on a Blackwell card without --block-size gets CUTLASS MLA's block of 128, and
    the vllm serve line carries --block-size 128 so that vLLM picks a backend with that page.
    """
    if settings.block_size is not None or family != "blackwell" or not getattr(spec, "is_mla", False):
        return settings, None
    warning = (f"MLA block size {BLACKWELL_MLA_BLOCK_SIZE} (CUTLASS MLA, vLLM's default MLA backend on Blackwell); "
               f"the vllm serve line passes --block-size {BLACKWELL_MLA_BLOCK_SIZE}; give --block-size 64 for "
               "FlashMLA / FlashInfer-MLA")
    return replace(settings, block_size=BLACKWELL_MLA_BLOCK_SIZE), warning


def kv_layout_for(settings: ProfileSettings, spec: Any, max_num_batched_tokens: int) -> Any:
    """The KV layout of the measured rank (a PP stage's layers only)."""
    from kvadvise.plan.kv import KvSettings, kv_layout

    kv_settings = KvSettings(tensor_parallel_size=settings.tensor_parallel_size,
                             kv_cache_dtype=settings.kv_cache_dtype, block_size=settings.block_size,
                             max_model_len=settings.max_model_len,
                             max_num_batched_tokens=max_num_batched_tokens, vllm_version=settings.vllm_version)
    layers = stage_layers(settings.partition, settings.stage) if settings.partition is not None else None
    return kv_layout(spec, kv_settings, layers=layers)


def advise_budgets(settings: ProfileSettings, spec: Any, memory: NonKvMemory, total_bytes: int,
                   free_bytes_at_start: int, layout: Any, max_num_batched_tokens: int,
                   max_num_seqs: int) -> tuple[Advice, BudgetOption, BudgetOption, list[str]]:
    """vLLM's advice for the non-KV terms, what "fit" and "full" buy, and the warnings that go with them.

    One code path for `profile` and `estimate`: the measured or estimated terms differ, the advice does not.
    """
    advice = advise(memory, DeviceBudget(total_bytes, free_bytes_at_start, settings.gpu_memory_utilization),
                    settings.vllm_version)
    warnings: list[str] = list(getattr(spec, "notes", ()))
    model_name, name_warning = served_model_name(settings.model_id, dict(getattr(spec, "raw_config", {}) or {}))
    if name_warning:
        warnings.append(name_warning)
    if advice.capped_by_free_memory:
        warnings.append(f"less memory is free at start ({free_bytes_at_start} bytes) than --util "
                        f"{settings.gpu_memory_utilization} requests ({advice.requested_bytes} bytes): vLLM's 'fit' "
                        f"formula ({advice.vllm_fit_kv_cache_memory_bytes} bytes) would not fit, so 'fit' is 'full'")
    if advice.gate_gpu_memory_utilization is not None and \
            advice.gate_gpu_memory_utilization < settings.gpu_memory_utilization:
        warnings.append(f"only {free_bytes_at_start} bytes are free at start: vLLM's start-up gate (free >= "
                        f"total x util) fails at --gpu-memory-utilization {settings.gpu_memory_utilization}; the "
                        f"commands use {advice.gate_gpu_memory_utilization:.2f}, which passes it")
    options = []
    for label, kv_bytes in (("fit", advice.fit_kv_cache_memory_bytes), ("full", advice.full_kv_cache_memory_bytes)):
        option, warning = budget_option(settings, model_name, layout, kv_bytes, advice, label)
        options.append(option)
        if warning:
            warnings.append(warning)
    return advice, options[0], options[1], warnings


def budget_option(settings: ProfileSettings, model_name: str, layout: Any, kv_bytes: int, advice: Advice,
                  label: str = "fit") -> tuple[BudgetOption, Optional[str]]:
    """What one suggested budget buys, and the `vllm serve` line carrying it (None when nothing fits).

    When one request of the model length does not fit the budget, vLLM would refuse to start (vLLM 0.11
    v1/core/kv_cache_utils.py check_enough_kv_cache_memory): the line then caps --max-model-len at the
    longest length that fits, and the warning says so.
    """
    if kv_bytes <= 0:
        return BudgetOption(kv_cache_memory_bytes=kv_bytes, tokens=None, max_concurrency=None, num_blocks=None,
                            command=None), None
    from kvadvise.plan.kv import kv_capacity

    capacity = kv_capacity(layout, kv_bytes)
    tokens, concurrency, blocks = capacity.tokens, capacity.max_concurrency, capacity.num_blocks
    max_model_len, warning = settings.max_model_len, None
    if not capacity.fits_one_request:
        longest = capacity.largest_fitting_model_len
        if not longest:
            return BudgetOption(kv_cache_memory_bytes=kv_bytes, tokens=tokens, max_concurrency=concurrency,
                                num_blocks=blocks, command=None), (
                f"{label}: {kv_bytes} bytes hold no complete request at all: vLLM would refuse to start")
        max_model_len = longest
        warning = (f"{label}: one request of {capacity.max_model_len} tokens does not fit in {kv_bytes} bytes "
                   f"(vLLM would refuse to start); its vllm serve line sets --max-model-len {longest}, the "
                   f"longest that fits")
    gate = advice.gate_gpu_memory_utilization
    utilization = settings.gpu_memory_utilization if gate is None else min(settings.gpu_memory_utilization, gate)
    env = None
    if settings.partition is not None:
        env = {"VLLM_PP_LAYER_PARTITION": ",".join(str(n) for n in settings.partition)}
    command = vllm_serve_command(
        model_name, kv_bytes, gpu_memory_utilization=utilization,
        tensor_parallel_size=settings.tensor_parallel_size, pipeline_parallel_size=settings.pipeline_parallel_size,
        max_model_len=max_model_len, kv_cache_dtype=settings.kv_cache_dtype, block_size=settings.block_size,
        max_num_batched_tokens=settings.max_num_batched_tokens, max_num_seqs=settings.max_num_seqs,
        enforce_eager=settings.enforce_eager, env=env)
    return BudgetOption(kv_cache_memory_bytes=kv_bytes, tokens=tokens, max_concurrency=concurrency,
                        num_blocks=blocks, command=command), warning


def require_cuda(device_text: str) -> None:
    """No CUDA and no --device cpu: an environment problem with the two ways forward."""
    raise EnvironmentProblem(f"no CUDA device available for --device {device_text}",
                             hint="run `kvadvise estimate MODEL` (no GPU needed) or measure on the host with "
                                  "`--device cpu --gpu-memory SIZE`")


# ------------------------------------------------------------------ the real workload --------------------

class TorchWorkload:
    """The model side on a real device: build (kvadvise.profile.build), dummy run (kvadvise.profile.runner),
    and the decode step that CUDA graphs capture. torch is imported inside the methods."""

    def __init__(self, spec: Any, settings: ProfileSettings, device: Device, *,
                 model_path: Optional[str] = None, target_family: Optional[str] = None) -> None:
        self.spec = spec
        self.settings = settings
        self.device = device
        self.model_path = model_path
        self.target_family = target_family     # the card the host run stands for (cuBLAS workspace)
        self.model: Any = None
        self._static: list[Any] = []
        self._plan: Any = None
        self._inputs: Any = None
        self.warnings: list[str] = []

    def _shape(self) -> Any:
        return self.settings.shard_shape

    def load(self) -> Optional[int]:
        from kvadvise.profile.build import build_model, quiet_transformers, tensor_bytes

        if self.device.kind == "cpu":
            self._check_host_memory()
        with quiet_transformers():
            self.model = build_model(self.spec, load_format=self.settings.load_format,
                                     model_path=self.model_path, dtype=self.settings.dtype,
                                     device=self.device.torch_device, shape=self._shape(),
                                     trust_remote_code=self.settings.trust_remote_code,
                                     revision=self.settings.revision)
        return tensor_bytes(self.model)

    def vllm_weight_buffers(self) -> Any:
        """vLLM's weight-time buffers this HF model lacks (kvadvise.plan.vllm_buffers, via build.py)."""
        from kvadvise.profile.build import vllm_weight_buffers_of

        buffers = vllm_weight_buffers_of(self.model, self.spec, self._shape())
        self.warnings.extend(buffers.notes)
        return buffers

    def cublas_workspace_bytes(self) -> int:
        """On the host: the target card's cuBLAS workspace, which a CUDA process allocates at its first matmul
        (inside vLLM's profile run, so in its activation peak). On CUDA: 0, the device allocates its own."""
        if self.device.kind == "cuda":
            return 0
        from kvadvise.plan.dummy import cublas_workspace_bytes_for_family

        size, known = cublas_workspace_bytes_for_family(self.target_family)
        if not known:
            self.warnings.append(f"the target card's cuBLAS workspace is not known: {size} bytes (the largest, "
                                 "Hopper/Blackwell figure) counted in the activation peak")
        return size

    def estimate_cuda_graphs(self, sizes: Sequence[int]) -> Any:
        """The graph pool as `kvadvise estimate` figures it, traced on this host model (estimate/graphs.py)."""
        from kvadvise.estimate.graphs import estimate_graphs
        from kvadvise.profile.build import quiet_transformers

        with quiet_transformers():
            return estimate_graphs(self.model, self.spec, sizes, shape=self._shape())

    def _check_host_memory(self) -> None:
        """CPU mode runs the model for real: refuse before the host runs out (the weights, sized on "meta")."""
        from kvadvise.profile import device as devices
        from kvadvise.profile.build import build_model, tensor_bytes

        meta = build_model(self.spec, load_format="dummy", dtype=self.settings.dtype, device="meta",
                           shape=self._shape(), trust_remote_code=self.settings.trust_remote_code,
                           revision=self.settings.revision)
        needed = tensor_bytes(meta)
        del meta
        available, _ = devices.host_memory_bytes()
        if needed > available:
            raise EnvironmentProblem(
                f"the weights alone need {gib(needed)} but the host has {gib(available)} "
                "available: --device cpu runs the model for real",
                hint="run `kvadvise estimate MODEL` (no model in memory), measure one rank with "
                     "--tensor-parallel-size / --partition, or profile on the GPU")

    def prepare_dummy_run(self, num_tokens: int, num_seqs: int) -> None:
        """vLLM's persistent input buffers (ids, positions), made before the measured run as vLLM makes them
        in GPUModelRunner.__init__: not part of the activation peak."""
        from kvadvise.plan.dummy import plan_dummy_run
        from kvadvise.profile.runner import make_dummy_inputs

        self._plan = plan_dummy_run(num_tokens, num_seqs)
        self._inputs = make_dummy_inputs(self._plan, self.model, device=self.device.torch_device,
                                         sampler_rule=self.settings.sampler_rule)

    def dummy_run(self, num_tokens: int, num_seqs: int) -> None:
        from kvadvise.plan.dummy import plan_dummy_run
        from kvadvise.profile.runner import dummy_run
        from kvadvise.profile.sampler import sampler_warning

        plan = self._plan if self._plan is not None else plan_dummy_run(num_tokens, num_seqs)
        shape = self._shape()
        run_sampler = self.settings.run_sampler
        if run_sampler is None:
            run_sampler = shape.is_last_stage   # vLLM samples on the last pipeline stage only
        warning = sampler_warning(self.settings.vllm_version, plan.sampler_rows, self.spec.vocab_size,
                                  self.settings.model_runner)
        if run_sampler and warning:
            self.warnings.append(warning)
        from kvadvise.profile.build import quiet_transformers

        with quiet_transformers():
            dummy_run(self.model, self.spec, plan, device=self.device.torch_device, run_sampler=run_sampler,
                      sampler_version=self.settings.sampler_rule, shape=shape, inputs=self._inputs,
                      cublas_workspace_bytes=self.cublas_workspace_bytes())
        self._inputs = None
        from kvadvise.plan.fidelity import image_model_warning
        from kvadvise.profile.runner import multimodal_encoder_items

        if shape.is_first_stage and multimodal_encoder_items(self.model, num_tokens) is not None:
            self.warnings.append(image_model_warning())

    def prepare_graph_capture(self, sizes: Sequence[int]) -> tuple[StepFactory, int]:
        """Static inputs for the largest size (vLLM's persistent buffers) and the decode-step factory
        (kvadvise.profile.runner.prepare_decode_capture: the decoder on `size` sequences of one token)."""
        from kvadvise.profile.runner import prepare_decode_capture

        capture = prepare_decode_capture(self.model, self.spec, sizes, device=self.device.torch_device,
                                         shape=self._shape())
        self._static = [capture]    # its inputs and KV cache stay allocated through the capture
        return capture.make_step, capture.static_bytes

    def eager_decode_peak(self, device: Device, size: int) -> int:
        make_step, _ = self.prepare_graph_capture([size])
        device.reset_peak_memory_stats()
        before = device.memory_allocated()
        output = make_step(size)()
        device.synchronize()
        peak = device.max_memory_allocated() - before
        del output
        self._static = []
        return peak

    def release(self) -> None:
        import gc

        self._static = []
        self._inputs = None
        self.model = None
        # a full collection is slow (~0.5 s); the host has no cache to return, so young cycles suffice there
        gc.collect() if self.device.kind == "cuda" else gc.collect(1)
