"""The device interface: the fake caching allocator, the host device, NVML, and (on a real GPU) torch.cuda."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvadvise.profile.device import CpuDevice, CudaDevice, Device, MemorySnapshot, take_snapshot
from kvadvise.profile.nvml import NvmlInfo, OtherProcess, free_memory_disagrees, read_nvml
from fake_device import GIB, MIB, FakeCudaDevice, FakeOutOfMemory


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
    small = fake.allocate(1000)          # 512-byte blocks; a small request takes a 2 MiB segment
    assert fake.allocated == 1024 and fake.reserved == 2 * MIB
    big = fake.allocate(5 * MIB + 1)     # a large request: its own segment, rounded to 2 MiB
    assert fake.allocated == 1024 + 5 * MIB + 512 and fake.reserved == 2 * MIB + 6 * MIB
    assert fake.free == 10 * GIB - 8 * MIB
    fake.release(big)
    assert fake.allocated == 1024 and fake.reserved == 8 * MIB      # cached, still reserved
    again = fake.allocate(4 * MIB)       # reuses the cached segment
    assert fake.reserved == 8 * MIB
    fake.release(again)
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
    # pool: size 4 takes 4 MiB (temp) + 2 MiB (out); sizes 2 and 1 fit in the freed 4 MiB segment
    assert fake.reserved == 6 * MIB
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


# ---- NVML, through a stand-in for the pynvml module ----

class _FakeNvml:
    def __init__(self, free, processes, fail_init=False):
        self.free, self.processes, self.fail_init = free, processes, fail_init
        self.shutdown = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return "handle-" + uuid

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"handle-{index}"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlDeviceGetMigMode(self, handle):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 * GIB, free=self.free, used=80 * GIB - self.free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self.processes

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return []


def test_nvml_reads_device_and_other_processes():
    processes = [SimpleNamespace(pid=100, usedGpuMemory=2 * GIB), SimpleNamespace(pid=200, usedGpuMemory=GIB),
                 SimpleNamespace(pid=999, usedGpuMemory=5 * GIB)]
    nvml = _FakeNvml(70 * GIB, processes)
    info = read_nvml(uuid="GPU-1234", nvml=nvml, own_pid=999)
    assert info == NvmlInfo("NVIDIA H100 80GB HBM3", "550.54.15", None, 80 * GIB, 70 * GIB,
                            (OtherProcess(100, 2 * GIB), OtherProcess(200, GIB)))
    assert info.other_processes_bytes == 3 * GIB
    assert nvml.shutdown


def test_nvml_unknown_process_memory_is_none_not_zero():
    nvml = _FakeNvml(70 * GIB, [SimpleNamespace(pid=100, usedGpuMemory=None)])
    assert read_nvml(index=0, nvml=nvml, own_pid=1).other_processes_bytes is None


def test_nvml_absent_is_not_an_error():
    assert read_nvml(index=0, nvml=_FakeNvml(0, [], fail_init=True)) is None


def test_free_memory_disagreement_threshold():
    cuda_free = 100 * GIB
    assert not free_memory_disagrees(cuda_free + GIB, cuda_free)          # exactly 1%: not more than
    assert free_memory_disagrees(cuda_free + GIB + 1, cuda_free)
    assert not free_memory_disagrees(None, cuda_free)


# ---- a real GPU (skipped without one): a known allocation comes back exactly ----

@pytest.mark.gpu
def test_cuda_device_measures_a_known_allocation_exactly():
    import torch

    device = CudaDevice(0)
    device.init()
    device.empty_cache()
    device.reset_peak_memory_stats()
    before = take_snapshot(device)
    block = torch.empty(GIB, dtype=torch.uint8, device="cuda:0")
    after = take_snapshot(device)
    assert after.allocated_bytes - before.allocated_bytes == GIB
    assert after.reserved_bytes - before.reserved_bytes == GIB        # 1 GiB is a multiple of 2 MiB
    assert before.free_bytes - after.free_bytes == GIB
    assert after.non_torch_bytes == before.non_torch_bytes
    del block
    device.synchronize()
    assert device.max_memory_allocated() - before.allocated_bytes == GIB
    device.empty_cache()
    assert device.memory_reserved() == before.reserved_bytes


@pytest.mark.gpu
def test_cuda_device_captures_graphs_into_one_pool():
    import torch

    device = CudaDevice(0)
    device.init()
    weight = torch.ones(256, 256, device="cuda:0", dtype=torch.float16)
    inputs = torch.ones(64, 256, device="cuda:0", dtype=torch.float16)
    captured = device.capture_graphs(lambda size: (lambda: inputs[:size] @ weight), [8, 64, 16])
    assert captured.count == 3
    captured.graphs[0].replay()
    captured.release()
    device.empty_cache()


@pytest.mark.gpu
def test_cuda_first_matmul_after_init_allocates_the_cublas_workspace_inside_the_phase():
    """vLLM's first matmul is in its profile run: init must not create the cuBLAS workspace (see CudaDevice.init)."""
    import os

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
