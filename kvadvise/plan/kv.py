"""KV-cache arithmetic that matches vLLM to the block: page sizes, grouping, blocks, tokens, concurrency.

Mirrors ../shared/reference/vllm-accounting.md sections 4-6 (vLLM v1/kv_cache_interface.py,
v1/core/kv_cache_utils.py, model_executor/layers/mamba/mamba_utils.py and
model_executor/models/config.py HybridAttentionMambaModelConfig). Rules that differ between vLLM
versions are selected by `VllmRules` (`--vllm-version`).

Knows: what one rank's KV cache looks like for given settings, and what a byte budget buys.
Does not know: how big the budget is (profile/, estimate/), nor how to print anything (report/).
Not modelled (each fails closed or is named in `KvLayout.notes`): speculative-decoding drafter layers and
speculative Mamba blocks, the "all" Mamba cache mode, decode/prefill context parallelism, the
`fp8_ds_mla` cache of DeepSeek-V3.2, `--disable-hybrid-kv-cache-manager`.
Pure: plain Python over ModelSpec; never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Optional, Sequence

from kvadvise.errors import InputError
from kvadvise.model.spec import LayerKind, LayerSpec, MambaMixerSpec, ModelSpec

# The vLLM rule sets we implement; "0.11" stands for 0.10.2-0.12 unless a rule says otherwise.
VLLM_VERSIONS = ("0.10.2", "0.11", "0.12", "0.33")
DEFAULT_VLLM_VERSION = "0.33"
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
# vLLM's cache_config.mamba_cache_mode: "none" keeps one state per request; "align" (Mamba prefix caching)
# keeps two. "all" (a state per block) is not modelled.
MAMBA_CACHE_MODES = ("none", "align")
MAMBA_SSM_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")

# mirrors vLLM 0.11 config/cache.py: block_size defaults to 16 on CUDA.
DEFAULT_BLOCK_SIZE = 16
# mirrors vLLM 0.11 config/cache.py BlockSize: the values `vllm serve --block-size` accepts.
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
# mirrors vLLM 0.11 platforms/cuda.py: FlashMLA (the Hopper MLA default) forces block_size 64;
# CUTLASS MLA (the Blackwell default) forces 128 -- pass --block-size 128 for Blackwell.
MLA_DEFAULT_BLOCK_SIZE = 64
# mirrors vLLM 0.10.2 model_executor/models/config.py HybridAttentionMambaModelConfig: multiple of 16.
HYBRID_BLOCK_ALIGNMENT = 16
# `vllm serve` default on GPUs with >= 70 GiB other than A100 (0.11 engine/arg_utils.py); 2048 on others, and
# 16384 on >= 160 GiB GPUs since 0.28 (plan/dummy.py vllm_default_batch has the tiers).
# Only the sliding-window / chunked-local per-request maximum depends on it.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
_ATTENTION_KINDS = (LayerKind.FULL, LayerKind.SLIDING, LayerKind.CHUNKED, LayerKind.MLA)


def cdiv(numerator: int, denominator: int) -> int:
    """Ceiling division of integers (vLLM utils.cdiv)."""
    return -(-numerator // denominator)


@dataclass(frozen=True)
class VllmRules:
    """The parts of vLLM's KV arithmetic that changed between the versions we mirror."""

    version: str
    # 0.12+: group_size = the largest type's layer count when max < ratio * min (0.12: 1.25, 0.33: 1.5;
    # None before 0.12).
    group_size_max_ratio: Optional[float]
    # 0.33: "GPU KV cache size" = int(concurrency * max_model_len); before: num_blocks // groups * block.
    tokens_from_concurrency: bool
    # 0.11+: layers of one attention type with different page sizes share one group
    # (UniformTypeKVCacheSpecs, num_blocks = available // sum of their pages).
    uniform_type_groups: bool
    # newest: the SSM state dtype a config names (NemotronH mamba_ssm_cache_dtype, Qwen3.5 mamba_ssm_dtype) is
    # used; up to 0.12 only --mamba-ssm-cache-dtype changes it from the model dtype
    reads_config_ssm_dtype: bool = False
    # newest: a NemotronH config without mamba_ssm_cache_dtype keeps its SSM state in float32 (None: model dtype)
    nemotron_h_ssm_default: Optional[str] = None
    # the Mamba cache mode of hybrid models when the user names none: "align" once prefix caching became the
    # default for hybrid models, "none" before
    default_mamba_cache_mode: str = "none"
    # newest: the hybrid attention block is a multiple of max(16, the user's --block-size), not of 16
    hybrid_alignment_follows_block_size: bool = False
    # newest: --kv-cache-dtype auto takes the KV dtype the checkpoint declares (ModelOpt kv_cache_quant_algo,
    # llm-compressor kv_cache_scheme); up to 0.12 auto is the model dtype for ModelOpt checkpoints
    auto_kv_dtype_from_checkpoint: bool = False

    def describe(self) -> str:
        tokens = ("tokens = int(concurrency * max_model_len)" if self.tokens_from_concurrency
                  else "tokens = num_blocks // num_groups * block_size")
        grouping = ("group_size = min layers per type, or the max when max < "
                    f"{self.group_size_max_ratio} x min" if self.group_size_max_ratio
                    else "group_size = min layers per type")
        return (f"vLLM {self.version} rules: num_blocks = available // page // group_size; {grouping}; "
                f"{tokens}; concurrency = num_blocks / blocks per request")


def normalize_vllm_version(text: str) -> str:
    """A version as people write it (`v0.11.0`, `0.11.1`, `0.10.2.post1`, `0.12.0+cu128`) -> our rule-set name.

    0.11.x -> "0.11", 0.12.x -> "0.12", 0.33.x -> "0.33", 0.10.2 (and its post releases) -> "0.10.2";
    anything else is returned as given, for vllm_rules to refuse.
    """
    import re

    cleaned = str(text).strip().lower()
    cleaned = cleaned[1:] if cleaned.startswith("v") else cleaned
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-].*|rc\d+.*|\.post\d+.*)?$", cleaned)
    if not match:
        return str(text).strip()
    major, minor, patch = int(match.group(1)), int(match.group(2)), match.group(3)
    if (major, minor) == (0, 10):
        return "0.10.2" if patch is not None and int(patch) == 2 else str(text).strip()
    name = f"{major}.{minor}"
    return name if name in VLLM_VERSIONS else str(text).strip()


def vllm_rules(version: str) -> VllmRules:
    """The rule set for a `--vllm-version` value (InputError when we do not implement it)."""
    version = str(version).strip()
    if version not in VLLM_VERSIONS:
        raise InputError(f"--vllm-version {version!r} is not one we mirror",
                         hint=f"choose one of {', '.join(VLLM_VERSIONS)}: 0.10.2, 0.11 and 0.12 mirror those "
                              "releases; 0.33 mirrors the newest vLLM and is the nearest for any release after 0.12")
    return VllmRules(
        version=version,
        # mirrors vLLM 0.12 v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_page_size (1.25, PR #29303);
        # vLLM 0.33 raised it to 1.5 (PR #36684, merged 2026-03-10)
        group_size_max_ratio={"0.12": 1.25, "0.33": 1.5}.get(version),
        # mirrors vLLM 0.33 v1/core/kv_cache_utils.py _report_kv_cache_config (one capacity figure)
        tokens_from_concurrency=version == "0.33",
        # mirrors vLLM 0.11 v1/kv_cache_interface.py UniformTypeKVCacheSpecs
        uniform_type_groups=version != "0.10.2",
        # mirrors vLLM 0.33 model_executor/models/config.py NemotronHForCausalLMConfig (float32 since PR #39032)
        # mirrors vLLM 0.33 model_executor/models/config.py NemotronHForCausalLMConfig (hook since PR #29978)
        reads_config_ssm_dtype=version == "0.33",
        nemotron_h_ssm_default="float32" if version == "0.33" else None,
        # mirrors vLLM 0.33 engine/arg_utils.py: prefix caching on for hybrid models, Mamba mode "align" (PR #50991)
        default_mamba_cache_mode="align" if version == "0.33" else "none",
        # mirrors vLLM 0.33 platforms/interface.py _align_hybrid_block_size (kernel_block_alignment_size)
        hybrid_alignment_follows_block_size=version == "0.33",
        # mirrors vLLM 0.33 engine/arg_utils.py create_engine_config -> utils/torch_utils.py
        # resolve_kv_cache_dtype_string (PR #30785, after 0.12.0); see resolve_kv_cache_dtype for the older rule
        auto_kv_dtype_from_checkpoint=version == "0.33",
    )


@dataclass(frozen=True)
class KvSettings:
    """What the user passes to vLLM that shapes the KV cache."""

    tensor_parallel_size: int = 1
    kv_cache_dtype: str = "auto"
    block_size: Optional[int] = None          # None = vLLM's default for the model (16; MLA 64)
    max_model_len: Optional[int] = None       # None = the model's derived max_model_len
    max_num_batched_tokens: Optional[int] = None  # sliding / chunked per-request maximum; None = vLLM default
    vllm_version: str = DEFAULT_VLLM_VERSION
    mamba_cache_mode: Optional[str] = None    # "none" | "align" (two state blocks per request); None = version default
    mamba_ssm_cache_dtype: str = "auto"       # vLLM --mamba-ssm-cache-dtype; auto = the config's, else model dtype


@dataclass(frozen=True)
class KvGroup:
    """One KV-cache group (vLLM kv_cache_groups): layers of one kind sharing a block table."""

    kind: LayerKind
    layer_indices: tuple[int, ...]
    block_size: int                 # tokens per block for this group
    page_size_bytes: int            # bytes of one block of ONE layer (padded as vLLM pads)
    blocks_per_request: int         # the most blocks one request of max_model_len needs in this group
    sliding_window: Optional[int] = None
    attention_chunk_size: Optional[int] = None
    # bytes of one layer's block before padding (Mamba state padded up to the attention page)
    unpadded_page_size_bytes: Optional[int] = None
    # layers of this group in the whole model (layer_indices holds only the stage's, see kv_layout)
    model_layer_count: int = 0


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
    # --- added by the implementation ---
    vllm_version: str = DEFAULT_VLLM_VERSION
    kv_cache_dtype: str = "bfloat16"    # resolved (auto -> the model dtype)
    kv_cache_dtype_bytes: int = 2
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS  # as resolved
    mamba_state_bytes_per_request: Optional[int] = None  # all Mamba layers of the stage, unpadded
    layer_indices: tuple[int, ...] = ()  # the KV layers this layout covers (a PP stage's, or all)
    tokens_from_concurrency: bool = False
    mamba_cache_mode: str = "none"       # resolved: Mamba state blocks per request 1 ("none") or 2 ("align")
    notes: tuple[str, ...] = field(default_factory=tuple)        # facts about the layout (padding, raised blocks)
    assumptions: tuple[str, ...] = field(default_factory=tuple)  # defaults we chose, risky settings: warnings

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def blocks_per_request(self) -> int:
        """Blocks one request of max_model_len needs, summed over groups (vLLM concurrency divisor)."""
        return sum(group.blocks_per_request for group in self.groups)

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block id costs across the stage: page * group_size."""
        return self.page_size_bytes * self.group_size


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


# ----------------------------------------------------------------------------------------------
# dtypes, heads, pages


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a torch dtype name as configs and vLLM spell them."""
    name = str(dtype).replace("torch.", "")
    aliases = {"bf16": "bfloat16", "half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32"}
    name = aliases.get(name, name)
    if name not in _DTYPE_BYTES:
        raise InputError(f"unknown dtype {dtype!r}")
    return _DTYPE_BYTES[name]


def resolve_kv_cache_dtype(kv_cache_dtype: str, model_dtype: str) -> tuple[str, int]:
    """(resolved name, bytes per element): auto = the model dtype; fp8 variants are 1 byte.

    kv_layout first replaces auto by the checkpoint's declared KV dtype under the rules that do so (0.33).
    """
    name = str(kv_cache_dtype).strip()
    if name not in KV_CACHE_DTYPES:
        raise InputError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}",
                         hint=f"choose one of {', '.join(KV_CACHE_DTYPES)}")
    if name == "auto":
        # mirrors vLLM 0.11 utils/__init__.py get_kv_cache_torch_dtype: "auto" = the model dtype
        resolved = str(model_dtype).replace("torch.", "")
        return resolved, dtype_bytes(resolved)
    return name, _DTYPE_BYTES[name]


def checkpoint_kv_cache_dtype(spec: ModelSpec) -> Optional[str]:
    """The KV cache dtype the checkpoint declares, spelled as newest vLLM resolves `auto` to it (None: none).

    mirrors vLLM 0.33 utils/torch_utils.py get_kv_cache_quant_algo_string: ModelOpt's kv_cache_quant_algo "FP8"
    (config.json's quantization_config, or hf_quant_config.json, which vLLM's get_config puts there and
    ModelConfig tags quant_method "modelopt") -> "fp8_e4m3"; and model_executor/layers/attention/attention.py:
    llm-compressor's kv_cache_scheme sets the cache to "fp8".
    """
    quantization = spec.quantization
    if quantization is None or not quantization.kv_cache_dtype:
        return None
    if quantization.method.startswith("modelopt") and quantization.kv_cache_dtype == "fp8":
        return "fp8_e4m3"
    return quantization.kv_cache_dtype


def _default_batch_tiers(version: str) -> str:
    """vllm serve's default --max-num-batched-tokens by card under `version`'s rules, as text."""
    from kvadvise.plan.dummy import GIB, vllm_default_batch

    # the tiers come from plan/dummy.py (mirrors vLLM 0.11 engine/arg_utils.py, and the >= 160 GiB tier of 0.28+)
    large, _ = vllm_default_batch(160 * GIB, "h200", version)
    middle, _ = vllm_default_batch(80 * GIB, "h100", version)
    small, _ = vllm_default_batch(40 * GIB, "l40s", version)
    tiers = [f"vllm serve's default on >= 70 GiB GPUs other than A100 is {middle}"]
    if large != middle:
        tiers.append(f"{large} on >= 160 GiB GPUs (B200, MI300X)")
    tiers.append(f"{small} on others; pass the value your vllm serve uses")
    return ", ".join(tiers)


def _check_tensor_parallel(spec: ModelSpec, tp: int) -> None:
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise InputError(f"--tensor-parallel-size must be a positive integer, got {tp!r}")
    # mirrors vLLM 0.11 config/model.py verify_with_parallel_config
    if spec.num_attention_heads % tp:
        raise InputError(f"--tensor-parallel-size {tp} does not divide the {spec.num_attention_heads} "
                         f"attention heads of {spec.model_id}",
                         hint="vLLM requires num_attention_heads % tensor_parallel_size == 0")


def kv_heads_per_rank(total_kv_heads: int, tp: int, *, mla: bool = False) -> int:
    """KV heads one TP rank stores: replicated below one head per rank; MLA's latent is never split."""
    if mla:
        return 1  # mirrors vLLM 0.11 config/model.py get_num_kv_heads (use_mla -> 1)
    # mirrors vLLM 0.11 config/model.py get_num_kv_heads: max(1, total // tp)
    return max(1, total_kv_heads // tp)


def attention_bytes_per_token(layer: LayerSpec, spec: ModelSpec, tp: int, kv_bytes: int) -> int:
    """One layer's KV bytes per token on one rank (K and V; MLA: the latent only)."""
    head_size = layer.head_size if layer.head_size is not None else spec.head_size
    if layer.kind == LayerKind.MLA:
        # mirrors vLLM 0.11 v1/kv_cache_interface.py MLAAttentionSpec.page_size_bytes (no factor 2)
        return head_size * kv_bytes
    total = layer.num_kv_heads if layer.num_kv_heads is not None else spec.num_kv_heads
    if total % tp and tp % total:
        # mirrors vLLM 0.11 model_executor/layers/linear.py QKVParallelLinear (divide() asserts)
        raise InputError(f"--tensor-parallel-size {tp} neither divides nor is a multiple of the {total} KV heads "
                         f"of layer {layer.index}")
    # mirrors vLLM 0.11 v1/kv_cache_interface.py AttentionSpec.page_size_bytes: 2 * block * heads * head * dtype
    return 2 * kv_heads_per_rank(total, tp) * head_size * kv_bytes


def _divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise InputError(f"--tensor-parallel-size {denominator} does not divide {what} ({numerator})")
    return numerator // denominator


def mamba_state_shapes(mixer: MambaMixerSpec, tp: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv state shape, ssm/temporal state shape) on one TP rank, as vLLM allocates them."""
    kind = mixer.mixer
    if kind == "mamba2":
        missing = [n for n in ("intermediate_size", "n_groups", "num_heads", "head_dim", "state_size")
                   if getattr(mixer, n) is None]
        if missing:
            raise InputError(f"mamba2 mixer lacks {', '.join(missing)}")
        # mirrors vLLM 0.11 model_executor/layers/mamba/mamba_utils.py mamba2_state_shape
        n_groups = mixer.n_groups + (0 if mixer.n_groups % tp == 0 else tp - mixer.n_groups)
        conv_dim = mixer.intermediate_size + 2 * n_groups * mixer.state_size
        conv = (_divide(conv_dim, tp, "the mamba2 conv dimension"), mixer.conv_kernel - 1)
        ssm = (_divide(mixer.num_heads, tp, "the mamba2 heads"), mixer.head_dim, mixer.state_size)
        return conv, ssm
    if kind == "mamba1":
        if mixer.intermediate_size is None or mixer.state_size is None:
            raise InputError("mamba1 mixer lacks intermediate_size or state_size")
        # mirrors vLLM 0.11 model_executor/layers/mamba/mamba_utils.py mamba1_state_shape
        local = _divide(mixer.intermediate_size, tp, "the mamba intermediate size")
        return (local, mixer.conv_kernel - 1), (local, mixer.state_size)
    if kind == "gated_delta_net":
        missing = [n for n in ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim") if getattr(mixer, n) is None]
        if missing:
            raise InputError(f"gated delta net mixer lacks {', '.join(missing)}")
        # mirrors vLLM 0.10.2 model_executor/layers/mamba/mamba_utils.py gated_delta_net_state_shape
        conv_dim = mixer.head_k_dim * mixer.num_k_heads * 2 + mixer.head_v_dim * mixer.num_v_heads
        conv = (_divide(conv_dim, tp, "the gated delta net conv dimension"), mixer.conv_kernel - 1)
        ssm = (_divide(mixer.num_v_heads, tp, "the gated delta net value heads"), mixer.head_v_dim, mixer.head_k_dim)
        return conv, ssm
    raise InputError(f"unsupported linear-attention mixer {kind!r}",
                     hint="kvadvise models mamba1, mamba2 and gated_delta_net state")


def mamba_state_bytes(mixer: MambaMixerSpec, tp: int, model_dtype: str, ssm_dtype: Optional[str] = None) -> int:
    """One Mamba layer's state per request on one rank: conv state (model dtype) + ssm state.

    ssm_dtype: the resolved SSM state dtype; None = the mixer's (from the config), else the model dtype.
    """
    conv, ssm = mamba_state_shapes(mixer, tp)
    # mirrors vLLM 0.11 mamba_utils.py MambaStateDtypeCalculator: conv = model dtype (mamba_cache_dtype auto),
    # ssm = mamba_ssm_cache_dtype when set, else the conv dtype
    conv_bytes = dtype_bytes(model_dtype)
    ssm_dtype = ssm_dtype or mixer.ssm_state_dtype
    ssm_bytes = dtype_bytes(ssm_dtype) if ssm_dtype else conv_bytes
    # mirrors vLLM 0.11 v1/kv_cache_interface.py MambaSpec.page_size_bytes: sum of prod(shape) * dtype
    return prod(conv) * conv_bytes + prod(ssm) * ssm_bytes


# ----------------------------------------------------------------------------------------------
# per-request maxima


def group_blocks_per_request(kind: LayerKind, block_size: int, model_len: int, max_num_batched_tokens: int,
                             sliding_window: Optional[int] = None, attention_chunk_size: Optional[int] = None,
                             mamba_cache_mode: str = "none") -> int:
    """Most blocks one request of `model_len` tokens holds in a group of this kind."""
    if kind == LayerKind.SLIDING:
        # mirrors vLLM 0.11 v1/kv_cache_interface.py SlidingWindowSpec.max_memory_usage_bytes
        tokens = min(sliding_window - 1 + max_num_batched_tokens, model_len)
        return cdiv(tokens, block_size) + 1
    if kind == LayerKind.CHUNKED:
        # mirrors vLLM 0.11 v1/kv_cache_interface.py ChunkedLocalAttentionSpec.max_memory_usage_bytes
        tokens = min(attention_chunk_size + max_num_batched_tokens, model_len)
        return cdiv(tokens, block_size)
    if kind == LayerKind.MAMBA:
        # mirrors vLLM 0.11 v1/kv_cache_interface.py MambaSpec.max_memory_usage_bytes: one page ("none");
        # newer vLLM: page * (2 + speculative blocks) in "align" mode
        return 2 if mamba_cache_mode == "align" else 1
    # mirrors vLLM 0.11 v1/kv_cache_interface.py FullAttentionSpec.max_memory_usage_bytes
    return cdiv(model_len, block_size)


def request_blocks(layout: KvLayout, model_len: int) -> int:
    """Blocks one request of `model_len` tokens needs, summed over the layout's groups."""
    return sum(group_blocks_per_request(g.kind, g.block_size, model_len, layout.max_num_batched_tokens,
                                         g.sliding_window, g.attention_chunk_size, layout.mamba_cache_mode)
               for g in layout.groups)


# ----------------------------------------------------------------------------------------------
# layout


@dataclass(frozen=True)
class _LayerKv:
    index: int
    kind: LayerKind
    bytes_per_token: int              # attention; 0 for Mamba
    state_bytes: int                  # Mamba; 0 for attention
    sliding_window: Optional[int]
    attention_chunk_size: Optional[int]

    @property
    def type_key(self) -> tuple:
        """Layers with equal keys have equal vLLM KVCacheSpecs (same_type_layers in kv_cache_utils)."""
        return (self.kind, self.bytes_per_token, self.state_bytes, self.sliding_window, self.attention_chunk_size)


def check_block_size(value: Optional[int]) -> Optional[int]:
    """A --block-size as a user passes it to vLLM: one of BLOCK_SIZES (None = vLLM's default for the model).

    Only the flag is checked: the block size vLLM derives for a hybrid model (e.g. 544) is internal."""
    if value is not None and value not in BLOCK_SIZES:
        raise InputError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))} (vLLM's choices), "
                         f"got {value!r}")
    return value


def _positive(value: Optional[int], what: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InputError(f"{what} must be a positive integer, got {value!r}")


def _ssm_dtype(spec: ModelSpec, mixer: MambaMixerSpec, settings: KvSettings, rules: VllmRules) -> str:
    """The SSM state dtype vLLM uses: the CLI's, else (newest) the config's or a per-model default, else the
    model dtype."""
    if settings.mamba_ssm_cache_dtype != "auto":
        return settings.mamba_ssm_cache_dtype
    if rules.reads_config_ssm_dtype and mixer.ssm_state_dtype:
        return mixer.ssm_state_dtype
    if rules.nemotron_h_ssm_default and any(a.startswith("NemotronH") for a in spec.architectures):
        return rules.nemotron_h_ssm_default
    # mirrors vLLM 0.11 mamba_utils.py _mamba_state_dtype: mamba_ssm_cache_dtype "auto" = the conv (model) dtype
    return spec.dtype


def _layer_needs(spec: ModelSpec, settings: KvSettings, rules: VllmRules, kv_bytes: int) -> list[_LayerKv]:
    """What every KV-holding layer needs on one rank (per-token bytes, or a Mamba state)."""
    tp = settings.tensor_parallel_size
    needs: list[_LayerKv] = []
    for layer in spec.layers:
        if layer.kind == LayerKind.NONE:
            continue
        if layer.kind == LayerKind.MAMBA:
            if layer.mamba is None:
                raise InputError(f"layer {layer.index} of {spec.model_id} is a Mamba layer without its mixer")
            state = mamba_state_bytes(layer.mamba, tp, spec.dtype, _ssm_dtype(spec, layer.mamba, settings, rules))
            needs.append(_LayerKv(layer.index, layer.kind, 0, state, None, None))
            continue
        if layer.kind == LayerKind.SLIDING and not layer.sliding_window:
            raise InputError(f"layer {layer.index} of {spec.model_id} is sliding-window without a window")
        if layer.kind == LayerKind.CHUNKED and not layer.attention_chunk_size:
            raise InputError(f"layer {layer.index} of {spec.model_id} is chunked-local without a chunk size")
        needs.append(_LayerKv(layer.index, layer.kind, attention_bytes_per_token(layer, spec, tp, kv_bytes), 0,
                              layer.sliding_window if layer.kind == LayerKind.SLIDING else None,
                              layer.attention_chunk_size if layer.kind == LayerKind.CHUNKED else None))
    if not needs:
        raise InputError(f"{spec.model_id} has no layer with a KV cache (attention-free)")
    return needs


@dataclass
class _Pages:
    """Per layer type (type_key): block size, page bytes (padded) and page bytes before padding."""

    block: dict[tuple, int] = field(default_factory=dict)
    page: dict[tuple, int] = field(default_factory=dict)
    unpadded: dict[tuple, int] = field(default_factory=dict)


def _pages(model_id: str, needs: list[_LayerKv], block_size: int, rules: VllmRules, notes: list[str]) -> _Pages:
    """Pages of every layer type; a hybrid Mamba model raises the attention block and pads the Mamba page."""
    pages = _Pages()
    attention = [kv for kv in needs if kv.kind in _ATTENTION_KINDS]
    mamba = [kv for kv in needs if kv.kind == LayerKind.MAMBA]
    if not (attention and mamba):
        for kv in needs:
            pages.block[kv.type_key] = block_size
            page = block_size * kv.bytes_per_token if kv.kind != LayerKind.MAMBA else kv.state_bytes
            pages.page[kv.type_key] = pages.unpadded[kv.type_key] = page
        return pages
    per_token = {kv.bytes_per_token for kv in attention}
    if len(per_token) != 1:
        raise InputError(f"{model_id}: a hybrid Mamba model whose attention layers differ in KV size is not modelled")
    attn_per_token = per_token.pop()
    mamba_page = max(kv.state_bytes for kv in mamba)
    alignment = HYBRID_BLOCK_ALIGNMENT
    if rules.hybrid_alignment_follows_block_size:
        # mirrors vLLM 0.33 platforms/interface.py _align_hybrid_block_size: max(kernel minimum, block_size)
        alignment = max(HYBRID_BLOCK_ALIGNMENT, block_size)
    # mirrors vLLM 0.10.2 model_executor/models/config.py HybridAttentionMambaModelConfig.verify_and_update_config
    attn_block = alignment * cdiv(mamba_page, alignment * attn_per_token)
    if block_size < attn_block:
        notes.append(f"attention block size raised to {attn_block} tokens so that an attention page "
                     f"holds a Mamba state ({mamba_page:,} B), as vLLM does for hybrid models")
        block_size = attn_block
    attn_page = block_size * attn_per_token
    for kv in needs:
        pages.block[kv.type_key] = block_size
        # mirrors vLLM 0.10.2 model_executor/models/config.py: mamba_page_size_padded = attention page size
        pages.page[kv.type_key] = attn_page
        pages.unpadded[kv.type_key] = kv.state_bytes if kv.kind == LayerKind.MAMBA else attn_page
    if attn_page > mamba_page:
        notes.append(f"Mamba state page padded from {mamba_page:,} B to {attn_page:,} B "
                     f"({(attn_page - mamba_page) / mamba_page * 100:.2f}%)")
    return pages


def _grouping(model_id: str, needs: list[_LayerKv], pages: _Pages, rules: VllmRules,
              notes: list[str]) -> tuple[list[tuple[tuple, list[int]]], bool]:
    """vLLM's kv_cache_groups over the whole model: [(type_key, layer indices)], and whether the one group
    holds layers of one type with different page sizes (UniformTypeKVCacheSpecs)."""
    same_type: dict[tuple, list[int]] = {}          # layers of equal KV spec, in model order
    for kv in needs:
        same_type.setdefault(kv.type_key, []).append(kv.index)
    if len(same_type) == 1:
        # mirrors vLLM 0.11 v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_spec
        return list(same_type.items()), False
    kinds = {key[0] for key in same_type}
    windows = {(key[3], key[4]) for key in same_type}
    if len(kinds) == 1 and len(windows) == 1 and LayerKind.MAMBA not in kinds:
        # one attention type with different page sizes (e.g. per-layer KV heads)
        if not rules.uniform_type_groups:
            raise InputError(f"{model_id}: layers of one attention type with different KV sizes are not "
                             f"modelled under the {rules.version} rules", hint="use --vllm-version 0.11 or newer")
        # mirrors vLLM 0.11 v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_type
        notes.append("one group of layers with different page sizes: num_blocks = available // the sum of "
                     "their pages (vLLM UniformTypeKVCacheSpecs)")
        return [(next(iter(same_type)), sorted(i for indices in same_type.values() for i in indices))], True
    # mirrors vLLM 0.11 v1/core/kv_cache_utils.py unify_kv_cache_spec_page_size
    max_page = max(pages.page.values())
    for key, page in list(pages.page.items()):
        if page != max_page:
            if max_page % page:
                raise InputError(f"{model_id}: KV page sizes {sorted(set(pages.page.values()))} cannot be "
                                 "unified by raising block sizes; vLLM refuses this layout")
            pages.block[key] *= max_page // page
            pages.page[key] = max_page
            notes.append(f"{key[0].value} block size raised to {pages.block[key]} to match the largest page")
    # mirrors vLLM 0.11 v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_page_size
    counts = [len(indices) for indices in same_type.values()]
    group_size = min(counts)
    if rules.group_size_max_ratio is not None and max(counts) < min(counts) * rules.group_size_max_ratio:
        group_size = max(counts)
    grouped: list[tuple[tuple, list[int]]] = []
    for key, indices in same_type.items():
        num = cdiv(len(indices), group_size)
        if len(indices) % group_size:
            notes.append(f"{group_size - len(indices) % group_size} padding layers in the last "
                         f"{key[0].value} group (vLLM wastes their share of the budget)")
        # layers[i::num] (not consecutive runs) so every PP stage gets a share of every group
        grouped.extend((key, indices[i::num]) for i in range(num))
    return grouped, False


def kv_layout(spec: ModelSpec, settings: KvSettings, layers: Optional[Sequence[int]] = None) -> KvLayout:
    """Lay out the KV cache for all layers, or only `layers` (a PP stage's layer indices).

    Groups are formed over the whole model and then projected onto `layers`, as vLLM's
    get_kv_cache_configs does for pipeline stages; group_size is then the stage's largest group.
    """
    rules = vllm_rules(settings.vllm_version)
    tp = settings.tensor_parallel_size
    _check_tensor_parallel(spec, tp)
    _positive(settings.block_size, "--block-size")
    _positive(settings.max_model_len, "--max-model-len")
    _positive(settings.max_num_batched_tokens, "--max-num-batched-tokens")
    declared_kv_dtype = checkpoint_kv_cache_dtype(spec)
    requested_kv_dtype = settings.kv_cache_dtype
    if str(requested_kv_dtype).strip() == "auto" and declared_kv_dtype and rules.auto_kv_dtype_from_checkpoint:
        # mirrors vLLM 0.33 engine/arg_utils.py: resolve_kv_cache_dtype_string before CacheConfig, so auto is
        # sized exactly as if the declared dtype had been passed
        requested_kv_dtype = declared_kv_dtype
    kv_dtype, kv_bytes = resolve_kv_cache_dtype(requested_kv_dtype, spec.dtype)
    mamba_cache_mode = settings.mamba_cache_mode or rules.default_mamba_cache_mode
    if mamba_cache_mode not in MAMBA_CACHE_MODES:
        raise InputError(f"unknown Mamba cache mode {settings.mamba_cache_mode!r}",
                         hint=f"choose one of {', '.join(MAMBA_CACHE_MODES)}")
    max_model_len = settings.max_model_len if settings.max_model_len is not None else spec.max_model_len
    if not max_model_len:
        raise InputError(f"the config of {spec.model_id} gives no maximum model length", hint="pass --max-model-len")
    max_num_batched_tokens = settings.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
    notes: list[str] = []
    assumptions: list[str] = []

    if settings.mamba_ssm_cache_dtype not in MAMBA_SSM_CACHE_DTYPES:
        raise InputError(f"unknown Mamba SSM cache dtype {settings.mamba_ssm_cache_dtype!r}",
                         hint=f"choose one of {', '.join(MAMBA_SSM_CACHE_DTYPES)}")
    needs = _layer_needs(spec, settings, rules, kv_bytes)
    by_index = {kv.index: kv for kv in needs}
    if layers is None:
        stage = set(by_index)
    else:
        unknown = [i for i in layers if not 0 <= i < spec.num_layers]
        if unknown:
            raise InputError(f"layer indices {unknown} are outside 0..{spec.num_layers - 1}")
        stage = {i for i in layers if i in by_index}
        if not stage:
            raise InputError("the requested layers hold no KV cache")

    has_mla = any(kv.kind == LayerKind.MLA for kv in needs)
    if settings.block_size is not None:
        block_size = settings.block_size
    elif has_mla:
        block_size = MLA_DEFAULT_BLOCK_SIZE
        assumptions.append(f"MLA block size {MLA_DEFAULT_BLOCK_SIZE} (FlashMLA, the Hopper default); "
                           "pass --block-size 128 for CUTLASS MLA on Blackwell")
    else:
        block_size = DEFAULT_BLOCK_SIZE
    pages = _pages(spec.model_id, needs, block_size, rules, notes)
    grouped, uniform_type = _grouping(spec.model_id, needs, pages, rules, notes)

    groups: list[KvGroup] = []
    for key, indices in grouped:
        kind, block = key[0], pages.block[key]
        stage_indices = tuple(i for i in indices if i in stage)
        if uniform_type:
            page = unpadded = sum(block * by_index[i].bytes_per_token for i in stage_indices)
        else:
            page, unpadded = pages.page[key], pages.unpadded[key]
        groups.append(KvGroup(
            kind=kind, layer_indices=stage_indices, block_size=block, page_size_bytes=page,
            blocks_per_request=group_blocks_per_request(kind, block, max_model_len, max_num_batched_tokens,
                                                        key[3], key[4], mamba_cache_mode),
            sliding_window=key[3], attention_chunk_size=key[4], unpadded_page_size_bytes=unpadded,
            model_layer_count=len(indices)))
    if uniform_type:
        # mirrors vLLM 0.11 v1/core/kv_cache_utils.py get_kv_cache_config_from_groups (UniformTypeKVCacheSpecs)
        group_size, page_size = 1, groups[0].page_size_bytes
    else:
        # mirrors vLLM 0.11 v1/core/kv_cache_utils.py get_kv_cache_config_from_groups
        group_size, page_size = max(len(g.layer_indices) for g in groups), groups[0].page_size_bytes
    attention_blocks = [g.block_size for g in groups if g.kind in _ATTENTION_KINDS]

    by_kind: dict[str, int] = {}
    for kv in needs:
        if kv.index in stage and kv.kind in _ATTENTION_KINDS:
            by_kind[kv.kind.value] = by_kind.get(kv.kind.value, 0) + kv.bytes_per_token
    stage_mamba = [kv.state_bytes for kv in needs if kv.index in stage and kv.kind == LayerKind.MAMBA]
    first = next((layer for layer in spec.layers if layer.kind in _ATTENTION_KINDS), None)
    heads = None if first is None else kv_heads_per_rank(
        first.num_kv_heads if first.num_kv_heads is not None else spec.num_kv_heads, tp, mla=has_mla)
    if any(g.kind in (LayerKind.SLIDING, LayerKind.CHUNKED) for g in groups) \
            and settings.max_num_batched_tokens is None:
        assumptions.append(f"the sliding/chunked per-request maximum assumes --max-num-batched-tokens "
                           f"{DEFAULT_MAX_NUM_BATCHED_TOKENS} ({_default_batch_tiers(rules.version)})")
    if settings.max_model_len and spec.max_model_len and settings.max_model_len > spec.max_model_len:
        # mirrors vLLM 0.11 config/model.py _get_and_verify_max_len: refused unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
        assumptions.append(f"--max-model-len {settings.max_model_len} exceeds the model's {spec.max_model_len}: "
                           "vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")
    if any(g.kind == LayerKind.MAMBA for g in groups) and settings.mamba_cache_mode is None:
        if mamba_cache_mode == "align":
            assumptions.append(f"Mamba cache mode 'align', two state blocks per request: vLLM {rules.version}'s "
                               "default with prefix caching (pass --mamba-cache-mode none if you disable it)")
        else:
            assumptions.append(f"Mamba cache mode 'none', one state block per request: vLLM {rules.version}'s "
                               "default (pass --mamba-cache-mode align if you enable Mamba prefix caching)")
    if declared_kv_dtype and str(settings.kv_cache_dtype).strip() == "auto":
        if rules.auto_kv_dtype_from_checkpoint:
            notes.append(f"--kv-cache-dtype auto resolved to {kv_dtype}, the KV cache dtype the checkpoint "
                         f"declares, as vLLM {rules.version} does (an explicit --kv-cache-dtype overrides it)")
        elif spec.quantization.method.startswith("modelopt"):
            # vLLM 0.10.2-0.12 size auto with the model dtype even for ModelOpt FP8-KV checkpoints: their
            # ModelOpt config only loads the k/v scales; reading kv_cache_quant_algo for auto came with PR #29980
            # ("hf_quant_config.json specifies kv_cache_quant_algo FP8, but vLLM loads the unquantized version of
            # kv-cache", opened 2025-12-03, reverted) and PR #30785 (relanded 2025-12-16), both after 0.12.0
            assumptions.append(f"the checkpoint declares a {declared_kv_dtype} KV cache, but vLLM {rules.version} "
                               f"sizes --kv-cache-dtype auto with the model dtype ({kv_dtype}); pass "
                               f"--kv-cache-dtype {declared_kv_dtype} to vllm serve and here to use it")
        else:
            # llm-compressor: vLLM's attention layer switches the cache to fp8 when the config has a
            # kv_cache_scheme; whether 0.10.2-0.12 also size the pages in fp8 is not verified
            assumptions.append(f"the checkpoint declares a {declared_kv_dtype} KV cache (kv_cache_scheme); under the "
                               f"vLLM {rules.version} rules this layout uses {kv_dtype} (unverified for that "
                               f"release): pass --kv-cache-dtype {declared_kv_dtype} if your vLLM logs an fp8 cache")

    return KvLayout(
        settings=settings, max_model_len=max_model_len,
        block_size=min(attention_blocks) if attention_blocks else groups[0].block_size,
        page_size_bytes=page_size, group_size=group_size, groups=tuple(groups),
        bytes_per_token=sum(by_kind.values()), bytes_per_token_by_kind=by_kind, kv_heads_per_rank=heads,
        rules=rules.describe(), vllm_version=rules.version, kv_cache_dtype=kv_dtype, kv_cache_dtype_bytes=kv_bytes,
        max_num_batched_tokens=max_num_batched_tokens,
        mamba_state_bytes_per_request=sum(stage_mamba) if stage_mamba else None, mamba_cache_mode=mamba_cache_mode,
        layer_indices=tuple(sorted(stage)), tokens_from_concurrency=rules.tokens_from_concurrency,
        notes=tuple(notes), assumptions=tuple(assumptions))


# ----------------------------------------------------------------------------------------------
# capacity


def num_blocks_for(layout: KvLayout, available_bytes: int) -> int:
    """Blocks a per-rank budget buys (vLLM get_num_blocks)."""
    # mirrors vLLM 0.11 v1/core/kv_cache_utils.py get_num_blocks: int(available // page // num_layers), >= 0
    return max(int(available_bytes // layout.page_size_bytes // layout.group_size), 0)


def capacity_from_blocks(layout: KvLayout, num_blocks: int, available_bytes: int = 0) -> KvCapacity:
    """Tokens and concurrency for a block count (also what PP uses after taking the minimum over stages)."""
    per_request = layout.blocks_per_request
    # mirrors vLLM 0.11 v1/core/kv_cache_utils.py get_max_concurrency_for_kv_cache_config
    concurrency = num_blocks / per_request
    if layout.tokens_from_concurrency:
        # mirrors vLLM 0.33 v1/core/kv_cache_utils.py _report_kv_cache_config: int(concurrency * max_model_len)
        tokens = int(concurrency * layout.max_model_len)
    else:
        # mirrors vLLM 0.11 v1/core/kv_cache_utils.py _report_kv_cache_config: num_blocks // groups * block
        tokens = num_blocks // layout.num_groups * layout.block_size
    fits = num_blocks >= per_request
    return KvCapacity(available_bytes=available_bytes, num_blocks=num_blocks, tokens=tokens,
                      max_concurrency=concurrency, max_model_len=layout.max_model_len, fits_one_request=fits,
                      largest_fitting_model_len=None if fits else largest_fitting_model_len(layout, num_blocks))


def kv_capacity(layout: KvLayout, available_bytes: int) -> KvCapacity:
    """num_blocks, tokens and concurrency for a per-rank budget (vLLM kv_cache_utils)."""
    return capacity_from_blocks(layout, num_blocks_for(layout, available_bytes), available_bytes)


def largest_fitting_model_len(layout: KvLayout, num_blocks: int) -> int:
    """The largest model length one request of which fits in `num_blocks` (0 when not even one token).

    mirrors vLLM 0.12 v1/core/kv_cache_utils.py _estimate_max_model_len_from_groups (binary search over
    group_size * page * blocks <= available, i.e. blocks <= num_blocks).
    """
    if request_blocks(layout, 1) > num_blocks:
        return 0
    low, high = 1, layout.max_model_len
    while low < high:
        middle = (low + high + 1) // 2
        if request_blocks(layout, middle) <= num_blocks:
            low = middle
        else:
            high = middle - 1
    return low


def bytes_for_blocks(layout: KvLayout, num_blocks: int) -> int:
    """The smallest per-rank budget that buys `num_blocks` blocks."""
    return num_blocks * layout.page_size_bytes * layout.group_size


def budget_for_model_len(layout: KvLayout, concurrency: int = 1) -> int:
    """The smallest per-rank budget for `concurrency` requests of max_model_len each."""
    return bytes_for_blocks(layout, layout.blocks_per_request * concurrency)
