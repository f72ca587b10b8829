"""KV-cache arithmetic that matches vLLM to the block: page sizes, grouping, blocks, tokens, concurrency.

Mirrors ../shared/reference/vllm-accounting.md sections 4-6 (vLLM v1/kv_cache_interface.py and
v1/core/kv_cache_utils.py). Rules that differ between vLLM versions are selected by `VllmRules`.
Pure: plain Python over ModelSpec; never imports torch.

INTERFACE (fixed; the implementation fills it in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from kvadvise.model.spec import LayerKind, ModelSpec

# The vLLM rule sets we implement; "0.11" stands for 0.10.2-0.12 unless a rule says otherwise.
VLLM_VERSIONS = ("0.10.2", "0.11", "0.12", "0.33")
DEFAULT_VLLM_VERSION = "0.33"
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")


@dataclass(frozen=True)
class KvSettings:
    """What the user passes to vLLM that shapes the KV cache."""

    tensor_parallel_size: int = 1
    kv_cache_dtype: str = "auto"
    block_size: Optional[int] = None          # None = vLLM's default for the model (16; MLA 64)
    max_model_len: Optional[int] = None       # None = the model's derived max_model_len
    max_num_batched_tokens: Optional[int] = None  # sliding / chunked per-request maximum; None = vLLM default
    vllm_version: str = DEFAULT_VLLM_VERSION


@dataclass(frozen=True)
class KvGroup:
    """One KV-cache group (vLLM kv_cache_groups): layers of one kind sharing a block table."""

    kind: LayerKind
    layer_indices: tuple[int, ...]
    block_size: int                 # tokens per block for this group
    page_size_bytes: int            # bytes of one block of ONE layer (padded as vLLM pads)
    blocks_per_request: int         # the most blocks one request of max_model_len needs in this group


@dataclass(frozen=True)
class KvLayout:
    """How a model's (or one PP stage's) KV cache is laid out for given settings."""

    settings: KvSettings
    max_model_len: int
    block_size: int                     # the block size of attention groups after hybrid adjustment
    page_size_bytes: int                # the common page size of one layer (all groups share it)
    group_size: int                     # layers per group (the num_layers in num_blocks = avail // page // n)
    groups: tuple[KvGroup, ...]
    bytes_per_token: int                # all layers, full attention sense (per TP rank)
    bytes_per_token_by_kind: dict[str, int]
    kv_heads_per_rank: Optional[int]
    rules: str                          # which vLLM rules were applied, for the report


@dataclass(frozen=True)
class KvCapacity:
    """What a KV budget buys under a layout."""

    available_bytes: int
    num_blocks: int
    tokens: int                        # as vLLM logs "GPU KV cache size: N tokens"
    max_concurrency: float             # as vLLM logs "Maximum concurrency for L tokens per request"
    max_model_len: int
    fits_one_request: bool
    largest_fitting_model_len: Optional[int]  # when one request of max_model_len does not fit


def kv_layout(spec: ModelSpec, settings: KvSettings, layers: Optional[Sequence[int]] = None) -> KvLayout:
    """Lay out the KV cache for all layers, or only `layers` (a PP stage's layer indices)."""
    raise NotImplementedError


def kv_capacity(layout: KvLayout, available_bytes: int) -> KvCapacity:
    """num_blocks, tokens and concurrency for a per-rank budget (vLLM kv_cache_utils)."""
    raise NotImplementedError
