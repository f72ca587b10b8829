"""Weight-time buffers vLLM holds that a Hugging Face (transformers) model does not: the one source of them.

Knows, from a text config and the rank's shard: vLLM's rotary cos/sin caches (one per distinct rotary
setting, counted in "Model loading took") and the rows vLLM adds to the token embedding and lm_head when
it pads the vocabulary to a multiple of 64. `kvadvise profile` adds these to the HF weights it measures,
`kvadvise estimate` to the HF weights it counts, so both report vLLM's figure the same way.
Does not know: anything a measurement could see (transformers' own buffers are in the measured part),
quantization-specific tensors (estimate/quantization.py), multimodal encoders' own caches (vLLM computes
vision rotary tables per forward). Pure: plain Python, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

# mirrors vLLM 0.11 model_executor/layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
VOCAB_PADDING = 64

# tensors vLLM keeps in float32 whatever the model dtype (every other floating weight is held in the model
# dtype): mirrors vLLM deepseek_v2.py DeepseekV2MoE (main, 2026-11), the noaux_tc router bias
# `nn.Parameter(torch.empty(n_routed_experts, dtype=torch.float32))`
VLLM_FLOAT32_LEAVES = frozenset({"e_score_correction_bias"})

ROTARY_DETAIL = "rotary cos/sin cache"
PADDING_DETAIL = "vocabulary padding to a multiple of 64"

# keys whose presence says the attention uses rotary position embeddings
_ROTARY_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "rotary_pct", "rotary_emb_base",
                "partial_rotary_factor", "qk_rope_head_dim", "rope_local_base_freq", "rotary_dim")
# models whose config names rope settings that vLLM's attention does not use: mirrors vLLM 0.11
# models/nemotron_h.py NemotronHAttention (qkv_proj, attn, o_proj: no rotary_emb, "NoPE")
_NO_ROTARY_MODEL_TYPES = ("nemotron_h",)
# rope types whose cache length we read in vLLM's rotary_embedding package
_KNOWN_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "deepseek_yarn", "llama3", "mrope", "longrope", "su")


def padded_vocab_size(vocab_size: int) -> int:
    """mirrors vLLM 0.11 vocab_parallel_embedding.py pad_vocab_size: round up to a multiple of 64."""
    return -(-vocab_size // VOCAB_PADDING) * VOCAB_PADDING


def vocab_rows_per_rank(vocab_size: int, tensor_parallel_size: int) -> int:
    """Embedding / lm_head rows one TP rank holds in vLLM (VocabParallelEmbedding: padded vocab / tp)."""
    return -(-padded_vocab_size(vocab_size) // tensor_parallel_size)


@dataclass(frozen=True)
class RotaryCache:
    """One cos/sin cache: positions x rotary dim, in element_bytes per value."""

    positions: int
    rotary_dim: int
    element_bytes: int

    @property
    def bytes(self) -> int:
        return self.positions * self.rotary_dim * self.element_bytes


def uses_rotary(text_config: Mapping[str, Any]) -> bool:
    """Whether the decoder's attention uses rotary embeddings (absolute / ALiBi position schemes do not)."""
    if text_config.get("position_embedding_type") in ("absolute", "alibi") or text_config.get("alibi"):
        return False
    if "n_positions" in text_config or text_config.get("use_rope") is False:
        return False
    if str(text_config.get("model_type", "")) in _NO_ROTARY_MODEL_TYPES:
        return False
    return any(text_config.get(key) is not None for key in _ROTARY_KEYS)


def _rope_entries(text_config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The rope settings of a text config (raw `rope_scaling` or transformers 5 `rope_parameters`)."""
    rope = text_config.get("rope_scaling") or text_config.get("rope_parameters") or {}
    if isinstance(rope, Mapping) and rope and all(isinstance(v, Mapping) for v in rope.values()):
        return [rope[key] for key in sorted(rope)]            # per layer type (gemma-3 style)
    entries = [rope if isinstance(rope, Mapping) else {}]
    model_type = str(text_config.get("model_type", ""))
    if model_type.startswith("gemma3"):
        # mirrors vLLM 0.11 models/gemma3.py Gemma3Attention: sliding layers call get_rope with
        # base=rope_local_base_freq and rope_scaling={"rope_type": "default"}
        entries.append({"rope_type": "default", "rope_theta": text_config.get("rope_local_base_freq", 10000.0)})
    return entries


def _rotary_dim(text_config: Mapping[str, Any]) -> Optional[int]:
    if text_config.get("qk_rope_head_dim"):
        return int(text_config["qk_rope_head_dim"])          # MLA: the rope part of the head
    head_dim = text_config.get("head_dim")
    if not head_dim:
        heads, hidden = text_config.get("num_attention_heads"), text_config.get("hidden_size")
        if not heads or not hidden:
            return None
        head_dim = hidden // heads
    rope = text_config.get("rope_parameters") or {}
    factor = (text_config.get("partial_rotary_factor") or text_config.get("rotary_pct")
              or (rope.get("partial_rotary_factor") if isinstance(rope, Mapping) else None) or 1.0)
    return int(int(head_dim) * float(factor))


def vllm_rotary_caches(text_config: Mapping[str, Any], dtype_bytes: int) -> tuple[tuple[RotaryCache, ...], bool]:
    """vLLM's rotary cos/sin caches for a text config, and whether every rule applied is one we read.

    mirrors vLLM 0.11 model_executor/layers/rotary_embedding/__init__.py get_rope (lru-cached on its
    arguments: layers with the same setting share one module) and each class's _compute_cos_sin_cache,
    a `cos_sin_cache` buffer of (max_len, rotary_dim) cast to the model dtype:
    default / llama3 / mrope: max_len = max_position_embeddings (base.py, llama3_rope.py, mrope.py);
    linear and dynamic scaling: max_position_embeddings x factor (linear_scaling_rope.py,
    dynamic_ntk_scaling_rope.py); yarn and deepseek_yarn: original_max_position_embeddings x factor
    (yarn_scaling_rope.py, deepseek_scaling_rope.py); longrope: original + max positions
    (phi3_long_rope_scaled_rope.py, short and long tables in one buffer).
    rotary_dim = head_dim x partial_rotary_factor (qk_rope_head_dim for MLA). gpt-oss asks for a float32
    cache (vLLM 0.11 models/gpt_oss.py OAIAttention: get_rope(..., dtype=torch.float32)).
    An unknown rope type is counted at max_position_embeddings and reported as not exact (False).
    """
    if not uses_rotary(text_config):
        return (), True
    max_positions = int(text_config.get("max_position_embeddings") or 0)
    rotary_dim = _rotary_dim(text_config)
    if max_positions <= 0 or not rotary_dim:
        return (), True
    element = 4 if str(text_config.get("model_type", "")) == "gpt_oss" else dtype_bytes
    exact = True
    seen: dict[tuple, RotaryCache] = {}
    for rope in _rope_entries(text_config):
        kind = str(rope.get("rope_type") or rope.get("type") or "default")
        factor = float(rope.get("factor") or 1.0)
        original = int(rope.get("original_max_position_embeddings") or max_positions)
        if kind in ("linear", "dynamic"):
            length = int(max_positions * factor)
        elif kind in ("yarn", "deepseek_yarn"):
            length = int(original * factor)
        elif kind in ("longrope", "su"):
            length = original + max_positions
        else:
            length = max_positions
            exact = exact and kind in _KNOWN_ROPE_TYPES
        theta = rope.get("rope_theta", text_config.get("rope_theta"))
        key = (kind, factor, theta, length)
        seen.setdefault(key, RotaryCache(length, rotary_dim, element))
    return tuple(seen.values()), exact


def vllm_rotary_cache_bytes(text_config: Mapping[str, Any], dtype_bytes: int) -> int:
    """Bytes of vLLM's rotary cos/sin caches for a text config in a model dtype of dtype_bytes."""
    caches, _ = vllm_rotary_caches(text_config, dtype_bytes)
    return sum(cache.bytes for cache in caches)


@dataclass(frozen=True)
class VocabTensor:
    """An embedding or lm_head tensor as the HF-shaped weights hold it on this rank."""

    vocab_size: int        # the whole model's vocabulary (the rows vLLM pads)
    rows_held: int         # rows this rank's HF-shaped tensor has
    width: int             # hidden size (columns)


def vocab_padding_bytes(tensors: Sequence[VocabTensor], tensor_parallel_size: int, dtype_bytes: int) -> int:
    """Rows vLLM holds beyond the HF-shaped tensors: (padded vocab / tp - rows held) x width, per tensor."""
    total = 0
    for tensor in tensors:
        missing = vocab_rows_per_rank(tensor.vocab_size, tensor_parallel_size) - tensor.rows_held
        total += max(0, missing) * tensor.width * dtype_bytes
    return total


@dataclass(frozen=True)
class VllmWeightBuffers:
    """What vLLM holds at load time beyond the HF model's tensors, for one rank: the `weights` sub-line."""

    rotary_cache_bytes: int
    vocab_padding_bytes: int
    method: str                         # "computed" (every rule read in vLLM) or "estimated"
    rotary_caches: tuple[RotaryCache, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.rotary_cache_bytes + self.vocab_padding_bytes

    def detail(self) -> dict[str, int]:
        """The non-zero parts by reason (the JSON `weights_vllm_buffers` object)."""
        parts = {ROTARY_DETAIL: self.rotary_cache_bytes, PADDING_DETAIL: self.vocab_padding_bytes}
        return {name: size for name, size in parts.items() if size}


NO_BUFFERS = VllmWeightBuffers(0, 0, "computed")


def vllm_weight_buffers(text_config: Mapping[str, Any], *, dtype_bytes: int, tensor_parallel_size: int = 1,
                        holds_layers: bool = True, vocab_tensors: Sequence[VocabTensor] = ()) -> VllmWeightBuffers:
    """vLLM's rotary caches (on a rank that holds decoder layers) and vocabulary padding for one rank."""
    caches, exact = vllm_rotary_caches(text_config, dtype_bytes) if holds_layers else ((), True)
    notes = []
    if not exact:
        notes.append("a rope type whose vLLM cache length we have not read: counted at max_position_embeddings")
    return VllmWeightBuffers(
        rotary_cache_bytes=sum(cache.bytes for cache in caches),
        vocab_padding_bytes=vocab_padding_bytes(vocab_tensors, tensor_parallel_size, dtype_bytes),
        method="computed" if exact else "estimated", rotary_caches=caches, notes=tuple(notes))


# ------------------------------------------------------------------ Model Runner V2's state ----------------

RUNNER_SAMPLER_DETAIL = "Model Runner V2 sampler state"
RUNNER_INPUTS_DETAIL = "Model Runner V2 request and input buffers"
# mirrors vLLM 0.27 v1/worker/gpu/sample/logit_bias.py MAX_ALLOWED_TOKEN_IDS / MAX_LOGIT_BIAS_TOKENS (1024) and
# MAX_STOP_TOKEN_IDS (128), bad_words.py MAX_BAD_WORDS_TOTAL_TOKENS (1024) and MAX_NUM_BAD_WORDS (128),
# sampling_params.py MAX_LOGPROB_TOKEN_IDS (128)
_LOGIT_BIAS_WIDTH, _STOP_IDS_WIDTH, _BAD_WORDS_WIDTH, _BAD_WORDS_COUNT, _LOGPROB_IDS_WIDTH = 1024, 128, 1024, 128, 128


def model_runner_v2_state_bytes(max_num_seqs: int, max_num_batched_tokens: int, vocab_size: int, *,
                                last_stage: bool = True) -> dict[str, int]:
    """Device tensors Model Runner V2 allocates after vLLM's start-up snapshot and outside "Model loading
    took", so vLLM 0.27+ counts them in its "consumed memory (weights + non-torch)": by reason, in bytes.

    R = max_num_seqs, T = max_num_batched_tokens, V = vocabulary (int32 unless said). Pinned host (UVA)
    tensors, e.g. RequestState.all_token_ids, take no device memory and are left out.
    - sampler state (the last pipeline stage, which samples): mirrors vLLM 0.27 v1/worker/gpu/sample/
      penalties.py (output_bin_counts R x V, prompt_bin_mask R x ceil(V/32)), logit_bias.py (allowed token
      ids, logit-bias ids and float32 biases, R x 1024 each; stop ids R x 128), bad_words.py (R x 1024 ids,
      R x 129 offsets), logprob.py LogprobTokenIdsState (R x 128), gpu/structured_outputs.py (logits indices R,
      grammar bitmask R x ceil(V/32));
    - request and input buffers: mirrors vLLM 0.27 v1/worker/gpu/states.py RequestState (total_len and
      num_computed_tokens R, last_sampled_tokens R int64, next_prefill_tokens R) and input_batch.py
      InputBuffers (input_ids T, positions T int64, is_padding T bool, query_start_loc R + 1, seq_lens and
      dcp_local_seq_lens R).
    """
    r, t = max_num_seqs, max_num_batched_tokens
    words = -(-vocab_size // 32)
    parts = {RUNNER_INPUTS_DETAIL: r * 4 * 2 + r * 8 + r * 4 + t * (4 + 8 + 1) + (r + 1) * 4 + 2 * r * 4}
    if last_stage:
        parts[RUNNER_SAMPLER_DETAIL] = (
            r * vocab_size * 4 + r * words * 4                        # penalties: output bin counts, prompt mask
            + 3 * r * _LOGIT_BIAS_WIDTH * 4 + r * _STOP_IDS_WIDTH * 4  # logit bias: two id tables, biases, stops
            + r * _BAD_WORDS_WIDTH * 4 + r * (_BAD_WORDS_COUNT + 1) * 4  # bad words: ids and offsets
            + r * _LOGPROB_IDS_WIDTH * 4                              # logprob token ids
            + r * 4 + r * words * 4)                                  # structured outputs: indices, bitmask
    return parts
