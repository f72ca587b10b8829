"""The device interface: the fake caching allocator, the host device, NVML, the real CudaDevice code over a
fake `torch` (tests/fake_device.FakeTorch), and (on a real GPU) torch.cuda itself."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvadvise.profile.device import CpuDevice, CudaDevice, Device, MemorySnapshot, take_snapshot
from kvadvise.profile.nvml import NvmlInfo, OtherProcess, free_memory_disagrees, read_nvml, read_nvml_for
from fake_device import GIB, MIB, Block, FakeCudaDevice, FakeNvml, FakeOutOfMemory, FakeTorch, ScriptedWorkload

UUID = "ffc79498-8ff3-c2dc-3b0d-fafd804516ae"
LLAMA_1B = Path(__file__).parent / "data" / "configs" / "meta-llama__Llama-3.2-1B.json"


def test_every_device_has_the_interface():
    assert isinstance(FakeCudaDevice(), Device)
    assert isinstance(CpuDevice(GIB), Device)
    assert isinstance(CudaDevice(0), Device)   # constructing it touches no GPU


def test_snapshot_arithmetic_is_vllms():
    snapshot = MemorySnapshot(free_bytes=70 * GIB, total_bytes=80 * GIB, reserved_bytes=9 * GIB,
                              allocated_bytes=8 * GIB, peak_allocated_bytes=8 * GIB + 1)
    assert snapshot.used_bytes == 10 * GIB
    assert snapshot.non_torch_bytes == GIB          # (total - free) - reserved


# ---- the fake behaves like the caching allocator ----

def test_fake_rounds_blocks_and_segments():
    fake = FakeCudaDevice(10 * GIB, context_bytes=0)
    fake.init()
    small = fake.allocate(1000)          # 512-byte blocks; a small request takes a 2 MiB small-pool segment
    assert fake.allocated == 1024 and fake.reserved == 2 * MIB
    huge = fake.allocate(11 * MIB + 1)   # 10 MiB or more: rounded up to 2 MiB, its own segment
    assert fake.allocated == 1024 + 11 * MIB + 512 and fake.reserved == 2 * MIB + 12 * MIB
    big = fake.allocate(5 * MIB + 1)     # 1-10 MiB: a 20 MiB large-pool segment (kLargeBuffer)
    assert fake.reserved == 2 * MIB + 12 * MIB + 20 * MIB
    assert fake.free == 10 * GIB - 34 * MIB
    fake.release(big)
    fake.release(huge)
    assert fake.allocated == 1024 and fake.reserved == 34 * MIB      # cached, still reserved
    again = fake.allocate(4 * MIB)       # reuses a cached large segment
    assert fake.reserved == 34 * MIB
    tiny = fake.allocate(100 * 1024)     # the small pool only: fits the small segment
    assert fake.reserved == 34 * MIB
    fake.release(again)
    fake.release(tiny)
    fake.release(small)
    fake.empty_cache()
    assert fake.reserved == 0 and fake.free == 10 * GIB


def test_fake_peak_and_reset():
    fake = FakeCudaDevice(10 * GIB)
    a = fake.allocate(100 * MIB)
    b = fake.allocate(50 * MIB)
    fake.release(a)
    assert fake.max_memory_allocated() == 150 * MIB
    fake.reset_peak_memory_stats()
    assert fake.max_memory_allocated() == 50 * MIB == fake.memory_allocated()
    fake.release(b)


def test_fake_out_of_memory_after_freeing_the_cache():
    fake = FakeCudaDevice(GIB, context_bytes=0)
    cached = fake.allocate(600 * MIB)
    fake.release(cached)                               # 600 MiB cached
    block = fake.allocate(800 * MIB)                   # fits only once the cache is returned
    assert fake.reserved == 800 * MIB
    with pytest.raises(FakeOutOfMemory):
        fake.allocate(300 * MIB)
    assert fake.is_out_of_memory(FakeOutOfMemory("x"))
    fake.release(block)


def test_fake_graph_pool_is_shared_and_held_until_release():
    fake = FakeCudaDevice(10 * GIB, context_bytes=0)

    def make_step(size):
        def step():
            temp = fake.allocate(size * MIB)
            out = fake.allocate(size * MIB // 2)
            fake.release(temp)
            return out
        return step

    captured = fake.capture_graphs(make_step, [1, 4, 2])
    assert captured.graphs == [4, 2, 1]                # largest first
    fake.empty_cache()                                 # warm-up cache goes, the pool stays
    # pool: size 4's 4 MiB temp takes a 20 MiB segment, its 2 MiB output fits there, so does size 2's temp;
    # 1 MiB and less is the small pool: size 2's output takes a 2 MiB segment, dropped after its capture,
    # which leaves room for size 1's temp and output -> 22 MiB
    assert fake.reserved == 22 * MIB
    captured.release()
    fake.empty_cache()
    assert fake.reserved == 0 and fake.allocated == 0


# ---- the host device: real tensors, the runner's live-bytes tracker ----

def test_cpu_device_measures_real_tensors_exactly():
    import torch

    from kvadvise.profile.tracker import LiveBytesTracker

    device = CpuDevice(24 * GIB, tracker=LiveBytesTracker())
    device.init()
    try:
        start = take_snapshot(device)
        assert (start.free_bytes, start.total_bytes) == (24 * GIB, 24 * GIB)
        kept = torch.empty(1024, 1024, dtype=torch.float32)      # 4 MiB, a multiple of 512
        device.reset_peak_memory_stats()
        before = device.memory_allocated()
        temp = torch.empty(3 * 1024 * 1024, dtype=torch.uint8)   # 3 MiB
        del temp
        after = take_snapshot(device)
        assert before - start.allocated_bytes == 4 * MIB
        assert after.peak_allocated_bytes - before == 3 * MIB
        assert after.allocated_bytes == before
        del kept
    finally:
        device.close()
    assert not device.supports_cuda_graphs and not device.measures_driver_memory


# ---- NVML, through a stand-in for the pynvml module (tests/fake_device.FakeNvml) ----

def test_nvml_reads_device_and_other_processes():
    processes = [SimpleNamespace(pid=100, usedGpuMemory=2 * GIB), SimpleNamespace(pid=200, usedGpuMemory=GIB),
                 SimpleNamespace(pid=999, usedGpuMemory=5 * GIB)]
    nvml = FakeNvml(processes=processes)
    # the bare UUID torch prints: NVML's "GPU-" prefix added, passed as bytes (old bindings need bytes)
    info = read_nvml(uuid=UUID, nvml=nvml, own_pid=999)
    # MIG mode: NVMLError_NotSupported on this card -> unknown (None), not an error
    assert info == NvmlInfo("NVIDIA H100 80GB HBM3", "550.54.15", None, 80 * GIB, 70 * GIB,
                            (OtherProcess(100, 2 * GIB), OtherProcess(200, GIB)), own_process_listed=True)
    assert info.other_processes_bytes == 3 * GIB
    assert nvml.initialised == 0                      # every nvmlInit matched by nvmlShutdown


def test_nvml_finds_a_mig_instance_by_its_prefix():
    # a MIG instance's handle does not answer nvmlDeviceGetMigMode (NotSupported): found by "MIG-", it is MIG
    nvml = FakeNvml(uuid="MIG-" + UUID, mig=None, processes=[SimpleNamespace(pid=7, usedGpuMemory=MIB)])
    info = read_nvml(uuid=UUID, nvml=nvml, own_pid=7)
    assert info is not None and info.mig_mode is True and info.other_processes_bytes == 0
    assert read_nvml(uuid="0000-no-such-device", nvml=nvml) is None and nvml.initialised == 0


def test_nvml_unknown_process_memory_is_none_not_zero():
    nvml = FakeNvml(processes=[SimpleNamespace(pid=1, usedGpuMemory=MIB),
                               SimpleNamespace(pid=100, usedGpuMemory=None)])
    assert read_nvml(index=0, nvml=nvml, own_pid=1).other_processes_bytes is None


def test_nvml_in_a_container_does_not_count_this_process_as_another():
    """Inside a container NVML lists host PIDs: this process (which holds a context when it asks) is not found
    under its own PID, so what "others" hold is unknown, not the sum of the list."""
    nvml = FakeNvml(processes=[SimpleNamespace(pid=645400, usedGpuMemory=600 * MIB)])
    info = read_nvml(index=0, nvml=nvml, own_pid=324)
    assert info.own_process_listed is False and info.other_processes_bytes is None


def test_nvml_on_a_driver_without_the_v3_process_query():
    """nvidia-ml-py >= 11.510 binds the unversioned process queries to _v3, which drivers before R510 lack."""
    nvml = FakeNvml(old_driver=True, processes=[SimpleNamespace(pid=1, usedGpuMemory=MIB),
                                                SimpleNamespace(pid=5, usedGpuMemory=3 * MIB)])
    info = read_nvml(index=0, nvml=nvml, own_pid=1)
    assert info.driver_version == "470.82.01"
    assert info.other_processes == (OtherProcess(5, 3 * MIB),) and info.other_processes_bytes == 3 * MIB


def test_nvml_that_cannot_list_processes_knows_nothing_about_them():
    nvml = FakeNvml(processes=[SimpleNamespace(pid=5, usedGpuMemory=3 * MIB)])
    nvml.nvmlDeviceGetComputeRunningProcesses = nvml.nvmlDeviceGetComputeRunningProcesses_v2 = None
    info = read_nvml(index=0, nvml=nvml, own_pid=1)
    assert info.own_process_listed is None and info.other_processes_bytes is None


def test_nvml_absent_is_not_an_error():
    assert read_nvml(index=0, nvml=FakeNvml(fail_init=True)) is None


def test_container_warning_through_the_session():
    from kvadvise.model.spec import load_model_spec
    from kvadvise.profile.session import ProfileSettings, run_profile

    spec = load_model_spec(str(LLAMA_1B))
    fake = FakeCudaDevice(80 * GIB)
    nvml = FakeNvml(free=80 * GIB - 500 * MIB, processes=[SimpleNamespace(pid=645400, usedGpuMemory=500 * MIB)])
    result = run_profile(ProfileSettings(model_id="meta-llama/Llama-3.2-1B", max_num_batched_tokens=2048,
                                         max_num_seqs=256, cuda_graph_sizes=(4, 2, 1)),
                         spec, fake, ScriptedWorkload(fake),
                         nvml_reader=lambda device: read_nvml(index=0, nvml=nvml, own_pid=324))
    assert result.report.device.other_processes_bytes is None
    text = " ".join(result.report.warnings)
    assert "none under this process's PID" in text and "other process(es) hold" not in text


def test_free_memory_disagreement_threshold():
    cuda_free = 100 * GIB
    assert not free_memory_disagrees(cuda_free + GIB, cuda_free)          # exactly 1%: not more than
    assert free_memory_disagrees(cuda_free + GIB + 1, cuda_free)
    assert not free_memory_disagrees(None, cuda_free)


# ---- the real CudaDevice code over a fake `torch` (documented torch.cuda names, the fake allocator) ----

def _cuda_on_fake(total_bytes=80 * GIB, **fake_options):
    fake = FakeCudaDevice(total_bytes, **fake_options)
    torch = FakeTorch(fake)
    return fake, torch, CudaDevice(0, torch_module=torch)


def test_cuda_device_reads_the_counters_vllm_reads():
    fake, torch, device = _cuda_on_fake(10 * GIB, context_bytes=300 * MIB)
    device.init()
    kept = fake.allocate(3 * MIB)          # 1-10 MiB: a 20 MiB segment
    temp = fake.allocate(30 * MIB)         # its own 30 MiB segment
    del temp                               # a tensor: freed when unreferenced, its segment cached
    snapshot = take_snapshot(device)
    assert snapshot == MemorySnapshot(free_bytes=10 * GIB - 300 * MIB - 50 * MIB, total_bytes=10 * GIB,
                                      reserved_bytes=50 * MIB, allocated_bytes=3 * MIB,
                                      peak_allocated_bytes=33 * MIB)
    stats = torch.cuda.memory_stats(0)
    assert (snapshot.allocated_bytes, snapshot.peak_allocated_bytes, snapshot.reserved_bytes) == (
        stats["allocated_bytes.all.current"], stats["allocated_bytes.all.peak"], stats["reserved_bytes.all.current"])
    device.reset_peak_memory_stats()
    assert device.max_memory_allocated() == 3 * MIB
    device.empty_cache()
    assert device.memory_reserved() == 20 * MIB
    assert device.name() == fake.device_name and device.uuid() == UUID   # bare, as torch's _CUuuid prints
    del kept


def test_cuda_device_warms_up_and_captures_on_one_side_stream():
    """vLLM's capture_model runs its warm-ups and captures on one stream (graph_capture); torch keeps one cuBLAS
    workspace per (handle, stream) for good, so a new warm-up stream per size would add a workspace per size to
    the measured graph memory (up to 32 of them: torch's stream pool)."""
    fake, torch, device = _cuda_on_fake(cublas_workspace_bytes=32 * MIB)
    device.init()
    workload = ScriptedWorkload(fake, step_matmul=True)
    make_step, _ = workload.prepare_graph_capture([4, 2, 1])
    fake.matmul()                          # the profile run's first matmul: handle + the default stream's workspace
    device.empty_cache()
    before = take_snapshot(device)
    captured = device.capture_graphs(make_step, [1, 4, 2])
    after = take_snapshot(device)
    assert captured.count == 3 and torch.cuda.streams_made == 1
    assert len(fake.workspaces) == 2       # the default stream's and the side stream's
    # the side stream's 32 MiB workspace (its own segment, from the first warm-up, live) + the shared pool of
    # 34 MiB worked out in test_profile_session.test_phases_order_and_arithmetic (same step, same sizes)
    assert before.free_bytes - after.free_bytes == 32 * MIB + 34 * MIB
    captured.release()
    device.release_workspaces()
    workload.release()
    device.empty_cache()
    assert fake.allocated == 0 and fake.reserved == 0 and set(fake.pool_users.values()) == {0}


def test_graph_outputs_go_back_to_the_pool_as_in_vllm():
    """vLLM keeps weak references to graph outputs: each capture's output block is reused by the next one.
    Keeping them would make the pool the sum of every size's output (67 sizes by default in vLLM 0.11)."""
    fake, torch, device = _cuda_on_fake(10 * GIB)
    device.init()
    make_step = lambda size: (lambda: fake.allocate(12 * MIB))     # noqa: E731 - a 12 MiB output per size
    before = take_snapshot(device)
    captured = device.capture_graphs(make_step, [3, 2, 1])
    after = take_snapshot(device)
    assert before.free_bytes - after.free_bytes == 12 * MIB          # one 12 MiB segment, reused
    captured.release()
    kept = device.capture_graphs(make_step, [3, 2, 1], keep_outputs=True)
    assert fake.allocated == 3 * 12 * MIB and all(isinstance(entry[1], Block) for entry in kept.keep_alive)
    kept.release()
    device.empty_cache()
    assert fake.allocated == 0 and fake.reserved == 0


def test_a_failed_capture_returns_the_graphs_captured_so_far():
    fake, torch, device = _cuda_on_fake(10 * GIB)
    device.init()

    def make_step(size):
        def step():
            if size == 2 and fake._capture_pool is not None:
                raise RuntimeError("operation not permitted when stream is capturing")
            return fake.allocate(size * 12 * MIB)
        return step

    with pytest.raises(RuntimeError, match="not permitted") as failure:
        device.capture_graphs(make_step, [4, 2, 1])
    # the traceback (kept by `failure`) holds the frame: still nothing of the pool may stay referenced
    assert set(fake.pool_users.values()) == {0} and fake.allocated == 0
    device.empty_cache()
    assert fake.reserved == 0
    del failure


def test_out_of_memory_hidden_behind_a_later_error_is_still_out_of_memory():
    fake, torch, device = _cuda_on_fake()
    try:
        try:
            raise FakeOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")
        except FakeOutOfMemory:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as error:
        assert device.is_out_of_memory(error)
    assert device.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not device.is_out_of_memory(RuntimeError("operation not permitted when stream is capturing"))


def test_cuda_device_uuid_finds_the_nvml_handle():
    fake, torch, device = _cuda_on_fake()
    processes = [SimpleNamespace(pid=42, usedGpuMemory=500 * MIB)]
    info = read_nvml_for(device, nvml=FakeNvml(uuid="GPU-" + UUID, processes=processes), own_pid=42)
    assert info is not None and info.name == "NVIDIA H100 80GB HBM3" and info.other_processes_bytes == 0


def test_the_session_through_the_real_cuda_device_code():
    """run_profile on CudaDevice itself (torch faked): every phase, vLLM's figures by hand, the card returned."""
    from kvadvise.model.spec import load_model_spec
    from kvadvise.profile.session import ProfileSettings, run_profile

    spec = load_model_spec(str(LLAMA_1B))
    fake, torch, device = _cuda_on_fake(80 * GIB, context_bytes=500 * MIB, cublas_workspace_bytes=8 * MIB)
    # 5 MiB of static inputs: placed beside the profile run's workspace (a 20 MiB segment, 12 MiB free), they
    # move no free memory; the graph phase measures after them, so neither they nor any rounding count
    workload = ScriptedWorkload(fake, step_matmul=True, static_bytes=5 * MIB)
    settings = ProfileSettings(model_id="meta-llama/Llama-3.2-1B", max_num_batched_tokens=2048, max_num_seqs=256,
                               cuda_graph_sizes=(4, 2, 1))
    result = run_profile(settings, spec, device, workload)
    memory = result.report.memory
    assert memory.weights_bytes == GIB + 100 * MIB + 1024                # 1000 bytes -> one 1024-byte block
    assert memory.activation_peak_bytes == 8 * MIB + 200 * MIB + 300 * MIB   # workspace of the first matmul + a + b
    assert memory.non_torch_bytes == 64 * MIB
    # the side stream's 8 MiB workspace takes a 20 MiB segment at the first warm-up (the warm-up's 12 MiB
    # intermediate fits beside it; the cached rest goes back at torch.cuda.graph's entry) + the 34 MiB pool
    assert memory.cuda_graph_bytes == 20 * MIB + 34 * MIB
    assert result.report.device.free_bytes_at_start == 80 * GIB - 500 * MIB
    assert fake.allocated == 0 and fake.reserved == 0                    # released: pool, workspaces, cache


def test_out_of_memory_during_capture_through_the_real_cuda_device_code():
    from kvadvise.model.spec import load_model_spec
    from kvadvise.profile.session import ProfileOutOfMemory, ProfileSettings, run_profile

    spec = load_model_spec(str(LLAMA_1B))
    fake, torch, device = _cuda_on_fake(80 * GIB)
    fake.fail_on_tag = "graph"
    settings = ProfileSettings(model_id="meta-llama/Llama-3.2-1B", max_num_batched_tokens=2048, max_num_seqs=256,
                               cuda_graph_sizes=(4, 2, 1))
    with pytest.raises(ProfileOutOfMemory) as failure:
        run_profile(settings, spec, device, ScriptedWorkload(fake))
    assert failure.value.phase == "cuda_graphs"
    assert failure.value.partial.measurements.non_torch_bytes == 64 * MIB
    del failure
    assert fake.allocated == 0 and fake.reserved == 0


# ---- a real GPU (skipped without one): a known allocation comes back exactly ----
# Exact reserved/free figures assume torch's default allocator settings: expandable segments map 20 MiB
# pages and roundup_power2_divisions rounds blocks differently, so those asserts skip under
# PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF (allocated bytes stay exact either way).

def _default_allocator() -> bool:
    import os

    return not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"))


@pytest.mark.gpu
def test_cuda_device_measures_a_known_allocation_exactly():
    import torch

    device = CudaDevice(0)
    device.init()
    device.empty_cache()
    device.reset_peak_memory_stats()
    before = take_snapshot(device)
    block = torch.empty(GIB, dtype=torch.uint8, device="cuda:0")   # no kernel runs: no lazy module load
    after = take_snapshot(device)
    assert after.allocated_bytes - before.allocated_bytes == GIB
    if _default_allocator():
        assert after.reserved_bytes - before.reserved_bytes == GIB    # >= 10 MiB: rounded to 2 MiB, exact
        assert before.free_bytes - after.free_bytes == GIB            # one cudaMalloc of exactly that
        assert after.non_torch_bytes == before.non_torch_bytes
    del block
    device.synchronize()
    assert device.max_memory_allocated() - before.allocated_bytes == GIB
    assert torch.cuda.memory_stats(0)["allocated_bytes.all.peak"] == device.max_memory_allocated()
    device.empty_cache()
    assert device.memory_reserved() == before.reserved_bytes


@pytest.mark.gpu
def test_cuda_device_captures_graphs_into_one_pool_with_one_workspace():
    """Warm-ups and captures on one side stream: the reserved growth is that stream's cuBLAS workspace and
    one 2 MiB small-pool segment of the shared pool holding the three outputs (32 + 8 + 4 KiB)."""
    import torch

    from kvadvise.plan.dummy import cublas_workspace_bytes
    from fake_device import segment_bytes

    device = CudaDevice(0)
    device.init()
    device.release_workspaces()  # no workspace of an earlier test's stream may be in `before`
    weight = torch.ones(256, 256, device="cuda:0", dtype=torch.float16)
    inputs = torch.ones(64, 256, device="cuda:0", dtype=torch.float16)

    def make_step(size):
        return lambda: inputs[:size] @ weight

    make_step(64)()              # eager once on the default stream: kernels loaded, cuBLAS handle made
    device.synchronize()
    device.empty_cache()
    before = take_snapshot(device)
    captured = device.capture_graphs(make_step, [8, 64, 16], keep_outputs=True)
    after = take_snapshot(device)
    assert captured.count == 3
    workspace = cublas_workspace_bytes(torch.cuda.get_device_capability(0)[0])
    if _default_allocator() and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        assert after.reserved_bytes - before.reserved_bytes == segment_bytes(workspace) + 2 * MIB
    for graph in captured.graphs:
        graph.replay()
    device.synchronize()
    assert all(bool((output == 256).all()) for _, output in captured.keep_alive)   # 256 ones summed
    captured.release()
    device.release_workspaces()
    device.empty_cache()
    if _default_allocator() and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        # pool and both workspaces returned: the default stream's (made by the eager call, in `before`) too
        assert device.memory_reserved() == before.reserved_bytes - segment_bytes(workspace)
    del weight, inputs


@pytest.mark.gpu
def test_cuda_first_matmul_after_init_allocates_the_cublas_workspace_inside_the_phase():
    """vLLM's first matmul is in its profile run: init must not create the cuBLAS workspace (see CudaDevice.init)."""
    import torch

    from kvadvise.plan.dummy import cublas_workspace_bytes

    if os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        pytest.skip("CUBLAS_WORKSPACE_CONFIG overrides torch's default workspace")
    device = CudaDevice(0)
    device.init()
    device.release_workspaces()
    device.empty_cache()
    before = take_snapshot(device)
    a = torch.ones((8, 8), device="cuda:0", dtype=torch.float32)
    product = a @ a
    after = take_snapshot(device)
    workspace = cublas_workspace_bytes(torch.cuda.get_device_capability(0)[0])
    # two 256-byte tensors take one 512-byte block each; the rest is the workspace of the first matmul
    assert after.allocated_bytes - before.allocated_bytes == 2 * 512 + workspace
    del a, product
    device.release_workspaces()
    device.empty_cache()
    assert device.memory_allocated() == before.allocated_bytes


@pytest.mark.gpu
def test_profile_a_tiny_model_on_the_card():
    """Every phase on the real card with a tiny Llama: weights = its storages in 512-byte blocks, the decode
    step captured (measured, not the fallback), and the card's allocator left as found."""
    import torch

    from kvadvise.profile.session import ProfileSettings, TorchWorkload, run_profile
    from tiny_models import tiny_config, tiny_spec

    spec = tiny_spec(tiny_config("llama"), model_id="tiny-llama")
    settings = ProfileSettings(model_id="tiny-llama", load_format="dummy", max_num_batched_tokens=64,
                               max_num_seqs=8, cuda_graph_sizes=(8, 4, 1))
    device = CudaDevice(0)
    device.init()
    device.release_workspaces()  # the session releases every workspace at the end: start without any
    device.empty_cache()
    allocated_before, reserved_before = torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)
    workload = TorchWorkload(spec, settings, device)
    storages: dict[int, int] = {}
    load = workload.load

    def load_and_list():
        loaded = load()
        for tensor in list(workload.model.parameters()) + list(workload.model.buffers()):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return loaded

    workload.load = load_and_list
    result = run_profile(settings, spec, device, workload)
    load_phase = next(phase for phase in result.phases if phase.name == "load")
    assert load_phase.detail["measured_bytes"] == sum(-(-nbytes // 512) * 512 for nbytes in storages.values())
    memory = result.report.memory
    assert memory.cuda_graph_method == "measured", result.report.warnings
    if _default_allocator() and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        from kvadvise.plan.dummy import cublas_workspace_bytes
        from fake_device import segment_bytes

        # at least the capture stream's cuBLAS workspace segment (vLLM's figure holds it too)
        assert memory.cuda_graph_bytes >= segment_bytes(cublas_workspace_bytes(torch.cuda.get_device_capability(0)[0]))
    assert torch.cuda.memory_allocated(0) == allocated_before
    assert torch.cuda.memory_reserved(0) == reserved_before
