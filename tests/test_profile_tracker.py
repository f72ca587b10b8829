"""LiveBytesTracker: live storage bytes as the CUDA caching allocator counts them, real and fake tensors."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from kvadvise.plan.dummy import plan_dummy_run
from kvadvise.profile.build import build_model
from kvadvise.profile.runner import dummy_run
from kvadvise.profile.tracker import LiveBytesTracker, allocator_rounded_bytes
from tiny_models import tiny_config, tiny_spec


def test_allocator_rounding_is_512_byte_blocks():
    # c10/cuda/CUDACachingAllocator.cpp round_size: kMinBlockSize = 512, round up to a multiple
    assert allocator_rounded_bytes(0) == 0
    assert allocator_rounded_bytes(1) == 512
    assert allocator_rounded_bytes(512) == 512
    assert allocator_rounded_bytes(513) == 1024
    assert allocator_rounded_bytes(4000) == 4096
    assert allocator_rounded_bytes(1 << 20) == 1 << 20


def test_allocation_free_peak_and_views():
    with LiveBytesTracker() as tracker:
        a = torch.empty(1000, dtype=torch.float32)       # 4000 bytes -> 4096
        assert tracker.current_bytes == 4096
        view = a[10:20].view(2, 5)                       # a view: no allocation
        a.add_(1.0)                                      # in place: no allocation
        b = torch.ones(3, dtype=torch.int64)             # 24 bytes -> 512
        assert tracker.current_bytes == 4096 + 512
        del a                                            # the view keeps the storage alive
        assert tracker.current_bytes == 4096 + 512
        del view
        assert tracker.current_bytes == 512
        c = torch.empty((1024, 1024), dtype=torch.bfloat16)   # 2 MiB, already a multiple of 512
        assert tracker.peak_bytes == 512 + (2 << 20)
        del c
        assert tracker.current_bytes == 512
        assert tracker.reset_peak() == 512
        assert tracker.peak_bytes == 512
        del b
    assert tracker.current_bytes == 0


def test_tensors_made_before_the_block_are_not_allocations_unless_adopted():
    weight = torch.empty((64, 32), dtype=torch.bfloat16)        # 4096 bytes, made outside
    with LiveBytesTracker() as tracker:
        transposed = weight.t()                                  # a view of it
        out = torch.nn.functional.linear(torch.zeros(4, 32, dtype=torch.bfloat16), weight)
        # zeros (4x32x2 = 256 -> 512, a temporary) and the output (4x64x2 = 512): t() is no allocation
        assert tracker.peak_bytes == 512 + 512
        assert tracker.current_bytes == 512
        tracker.adopt([weight])
        assert tracker.current_bytes == 512 + 4096
        del transposed, out
    assert tracker.current_bytes == 4096                         # the adopted weight is still alive


def test_torch_tensor_from_data_is_an_allocation_but_a_wrapped_scalar_is_not():
    with LiveBytesTracker() as tracker:
        data = torch.tensor([0, 1, 2, 3], dtype=torch.int64)     # 32 bytes -> 512
        assert tracker.current_bytes == 512
        mask = torch.zeros((2, 600), dtype=torch.bool)           # 1200 -> 1536
        mask[:, -1] = False                                      # the scalar stays on the host
        assert tracker.current_bytes == 512 + 1536
        del data, mask
    assert tracker.current_bytes == 0


def test_exact_bytes_when_not_rounding():
    with LiveBytesTracker(round_to_allocator=False) as tracker:
        x = torch.empty(3, dtype=torch.int64)
        assert tracker.current_bytes == 24
        del x


def test_counts_fake_tensors_like_real_ones():
    with FakeTensorMode():
        with LiveBytesTracker() as tracker:
            a = torch.empty(1000, dtype=torch.float32)           # 4000 -> 4096
            b = torch.tensor([1, 2, 3])                          # 24 -> 512
            assert tracker.current_bytes == 4096 + 512
            del a, b
        assert tracker.current_bytes == 0
        assert tracker.peak_bytes == 4096 + 512


def test_sort_values_dropped_immediately_on_real_and_fake():
    def run():
        with LiveBytesTracker() as tracker:
            a = torch.empty(1000, dtype=torch.float32)
            c = a.sort().indices
            current = tracker.current_bytes
            del a, c
        return current, tracker.peak_bytes

    real = run()
    with FakeTensorMode():
        fake = run()
    # a (4096) + indices (8192) live; values (4096) were live at the peak then dropped
    assert real == fake == (4096 + 8192, 4096 + 4096 + 8192)


def test_tiny_model_dummy_run_same_peak_on_cpu_and_under_fake_tensors():
    config = tiny_config("llama")
    spec = tiny_spec(config)
    plan = plan_dummy_run(96, 5)

    model = build_model(spec, load_format="dummy", device="cpu")
    with LiveBytesTracker() as real:
        dummy_run(model, spec, plan, device="cpu")

    with FakeTensorMode():
        fake_model = build_model(spec, load_format="dummy", device="cpu")
        with LiveBytesTracker() as fake:
            dummy_run(fake_model, spec, plan, device="cpu")

    assert real.peak_bytes == fake.peak_bytes
    assert real.peak_bytes > 0
    assert real.current_bytes == fake.current_bytes == 0        # nothing kept


def test_weights_built_under_the_tracker_are_their_rounded_storage_bytes():
    spec = tiny_spec(tiny_config("qwen2"))
    with LiveBytesTracker() as tracker:
        model = build_model(spec, load_format="dummy", device="cpu")
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes()
                for t in list(model.parameters()) + list(model.buffers())}
    assert tracker.current_bytes == sum(allocator_rounded_bytes(n) for n in storages.values())
