"""Live tensor-storage bytes, counted the way torch's CUDA caching allocator counts `allocated_bytes`.

`LiveBytesTracker` is a TorchDispatchMode: every aten op's outputs pass through it; a storage it has
not seen yet is a new allocation, rounded as the caching allocator rounds it; a weakref finalizer on
the storage's Python object (torch keeps one Python object per live storage) books the free when the
storage dies. So `current_bytes` / `peak_bytes` follow `torch.cuda.memory_allocated()` /
`max_memory_allocated()` for the tensors created inside the `with` block, on real CPU tensors and on
FakeTensorMode tensors alike (a fake tensor's storage is a meta storage with the real size).

What it does not see: tensors created before the block (pass them to `adopt` to count them), memory an
aten kernel takes for itself from the allocator (sort or cuBLAS workspaces, NCCL buffers), and memory
outside torch's allocator. Those are the differences from a real CUDA measurement.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# mirrors c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize = 512; round_size() returns
# kMinBlockSize for smaller requests, else kMinBlockSize * ceil(size / kMinBlockSize).
CUDA_MIN_BLOCK_BYTES = 512


def allocator_rounded_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator books for a request of nbytes (0 stays 0: no block is taken)."""
    if nbytes <= 0:
        return 0
    if nbytes < CUDA_MIN_BLOCK_BYTES:
        return CUDA_MIN_BLOCK_BYTES
    return CUDA_MIN_BLOCK_BYTES * ((nbytes + CUDA_MIN_BLOCK_BYTES - 1) // CUDA_MIN_BLOCK_BYTES)


class LiveBytesTracker(TorchDispatchMode):
    """Track the bytes of live tensor storages created inside the block: current and peak.

    Use `reset_peak()` to start a new phase; peak activation = `peak_bytes - bytes at the phase start`.
    `round_to_allocator=False` counts exact storage bytes instead of allocator blocks.
    """

    def __init__(self, round_to_allocator: bool = True) -> None:
        super().__init__()
        self.round_to_allocator = round_to_allocator
        self.current_bytes = 0
        self.peak_bytes = 0
        self.allocations = 0
        # re-entrant: a cyclic garbage collection inside _book may run a finalizer (_release) on this thread
        self._lock = threading.RLock()
        # id(storage python object) -> booked bytes; the finalizer removes the entry
        self._booked: dict[int, int] = {}
        # a 0-dim tensor from torch.tensor(scalar), booked once we know it is not a Python scalar
        # wrapped for the next op (`mask[:, -1] = False` wraps False the same way, on the host)
        self._pending_scalar: Optional[weakref.ref] = None

    # -- bookkeeping -------------------------------------------------------------------------------
    def _book(self, storage: Any) -> None:
        key = id(storage)
        nbytes = storage.nbytes()
        booked = allocator_rounded_bytes(nbytes) if self.round_to_allocator else nbytes
        with self._lock:
            previous = self._booked.get(key)
            if previous is not None:
                if booked <= previous:
                    return
                # a resize through `out=`: the allocator hands out a new, larger block
                self.current_bytes += booked - previous
                self._booked[key] = booked
            else:
                self._booked[key] = booked
                self.current_bytes += booked
                self.allocations += 1
                weakref.finalize(storage, self._release, key)
            if self.current_bytes > self.peak_bytes:
                self.peak_bytes = self.current_bytes

    def _release(self, key: int) -> None:
        with self._lock:
            booked = self._booked.pop(key, None)
            if booked is not None:
                self.current_bytes -= booked

    def _book_tensor(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return  # sparse / nested / functional wrappers without one storage
        self._book(storage)

    def adopt(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors created before the block (e.g. weights) as live from now on."""
        for tensor in tensors:
            self._book_tensor(tensor)

    def reset_peak(self) -> int:
        """Start a new phase: peak := current. Returns the current bytes (the phase's baseline)."""
        with self._lock:
            self.peak_bytes = self.current_bytes
            return self.current_bytes

    @property
    def live_storages(self) -> int:
        return len(self._booked)

    # -- dispatch ------------------------------------------------------------------------------------
    @staticmethod
    def _storage_ids(values: Any) -> set[int]:
        ids = set()
        flat, _ = tree_flatten(values)
        for item in flat:
            if isinstance(item, torch.Tensor):
                try:
                    ids.add(id(item.untyped_storage()))
                except (RuntimeError, NotImplementedError):
                    pass
        return ids

    def _settle_pending_scalar(self, input_ids: set[int], output_ids: set[int]) -> None:
        pending = self._pending_scalar
        storage = pending() if pending is not None else None
        if storage is None:
            self._pending_scalar = None
            return
        key = id(storage)
        if key not in input_ids:
            self._pending_scalar = None
            self._book(storage)       # kept past an unrelated op (e.g. a registered buffer): an allocation
        elif key not in output_ids:
            self._pending_scalar = None  # consumed by the op (a wrapped Python scalar): no device memory
        # else: an alias of it (detach, view) came out; decide at the next op

    def __exit__(self, *exc):
        self._settle_pending_scalar(set(), set())
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # outputs that share an input's storage (views, in-place ops, out=) are not allocations
        input_ids = self._storage_ids((args, kwargs))
        out = func(*args, **kwargs)
        if self._pending_scalar is not None:
            self._settle_pending_scalar(input_ids, self._storage_ids(out))
        # torch.tensor(data) builds its tensor outside the dispatcher and then calls lift_fresh on it:
        # that is the allocation (on a device, and under FakeTensorMode). A 0-dim one may be a Python
        # scalar wrapped for the next op (on the host, no device memory): decided at the next op.
        fresh = func is torch.ops.aten.lift_fresh.default
        flat, _ = tree_flatten(out)
        for item in flat:
            if not isinstance(item, torch.Tensor):
                continue
            try:
                storage = item.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if fresh:
                if item.dim() == 0:
                    self._pending_scalar = weakref.ref(storage)
                    continue
            elif id(storage) in input_ids and id(storage) not in self._booked:
                continue  # a view of (or a write into) a tensor made before the block
            self._book(storage)
        return out
