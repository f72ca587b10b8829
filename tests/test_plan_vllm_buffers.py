"""vLLM's weight-time buffers (kvadvise/plan/vllm_buffers.py): rotary caches and vocabulary padding, by hand."""

from __future__ import annotations

import json
from pathlib import Path

from kvadvise.plan.vllm_buffers import (VocabTensor, padded_vocab_size, vllm_rotary_cache_bytes, vllm_rotary_caches,
                                        vllm_weight_buffers, vocab_padding_bytes, vocab_rows_per_rank)

CONFIGS = Path(__file__).parent / "data" / "configs"
MIB = 1 << 20


def _shapes(config, dtype_bytes=2):
    caches, _ = vllm_rotary_caches(config, dtype_bytes)
    return tuple((cache.positions, cache.rotary_dim) for cache in caches)


def test_rotary_cache_shapes_by_hand():
    llama = {"max_position_embeddings": 131072, "hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 5e5,
             "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}
    assert _shapes(llama) == ((131072, 128),)
    assert vllm_rotary_cache_bytes(llama, 2) == 32 * MIB
    # gemma-3: global layers linear x8 (max_len = 131072 x 8), local layers unscaled; head_dim 256
    gemma = {"model_type": "gemma3_text", "max_position_embeddings": 131072, "head_dim": 256,
             "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 10000.0}
    assert _shapes(gemma) == ((1048576, 256), (131072, 256))
    assert vllm_rotary_cache_bytes(gemma, 2) == 576 * MIB
    # partial rotary (Qwen3-Next: 0.25 x 256), yarn (original x factor), MLA's rope head
    assert _shapes({"max_position_embeddings": 262144, "head_dim": 256, "rope_theta": 1e7,
                    "partial_rotary_factor": 0.25}) == ((262144, 64),)
    assert _shapes({"max_position_embeddings": 163840, "qk_rope_head_dim": 64,
                    "rope_scaling": {"type": "yarn", "factor": 40,
                                     "original_max_position_embeddings": 4096}}) == ((163840, 64),)
    # no rotary: nothing says so, absolute positions (GPT-2 style), ALiBi
    assert _shapes({"hidden_size": 64}) == ()
    assert _shapes({"max_position_embeddings": 2048, "hidden_size": 64, "num_attention_heads": 4}) == ()
    assert _shapes({"n_positions": 1024, "rope_theta": 1.0, "hidden_size": 64, "num_attention_heads": 4}) == ()
    # Nemotron-3-Nano's config names rope_theta, but vLLM's NemotronH attention has no rotary embedding
    nano = json.loads((CONFIGS / "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json").read_text())
    assert nano["rope_theta"] == 10000 and _shapes(nano) == ()


def test_gpt_oss_cache_is_float32_and_the_same_settings_share_one_cache():
    config = json.loads((CONFIGS / "openai__gpt-oss-120b.json").read_text())
    caches, exact = vllm_rotary_caches(config, 2)
    # yarn: original 4096 x factor 32 = 131072 positions x head_dim 64, float32 (vLLM gpt_oss.py asks for it)
    assert exact and [(c.positions, c.rotary_dim, c.element_bytes) for c in caches] == [(131072, 64, 4)]
    # transformers 5 per-layer-type rope parameters with identical settings: vLLM's get_rope is lru-cached
    same = {"max_position_embeddings": 4096, "head_dim": 64, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e4},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    assert _shapes(same) == ((4096, 64),)


def test_unknown_rope_type_is_estimated():
    buffers = vllm_weight_buffers({"max_position_embeddings": 4096, "head_dim": 64,
                                   "rope_scaling": {"rope_type": "brand-new", "factor": 4}}, dtype_bytes=2)
    assert buffers.rotary_cache_bytes == 4096 * 64 * 2 and buffers.method == "estimated"


def test_vocabulary_padding_by_hand():
    assert padded_vocab_size(151936) == 151936 and padded_vocab_size(32001) == 32064
    assert vocab_rows_per_rank(32001, 1) == 32064 and vocab_rows_per_rank(32001, 4) == 8016
    # whole rows held at TP 1: 63 rows x 4096 x 2 B, embedding and an untied lm_head
    tensors = [VocabTensor(32001, 32001, 4096), VocabTensor(32001, 32001, 4096)]
    assert vocab_padding_bytes(tensors, 1, 2) == 2 * 63 * 4096 * 2
    # a rank that already holds vLLM's padded share (the profile's TP build) adds nothing
    assert vocab_padding_bytes([VocabTensor(32001, 8016, 4096)], 4, 2) == 0
    # HF rows split over 4 ranks (ceil 32001 / 4 = 8001) vs vLLM's 8016: 15 rows
    assert vocab_padding_bytes([VocabTensor(32001, 8001, 4096)], 4, 2) == 15 * 4096 * 2


def test_weight_buffers_sub_line():
    llama = json.loads((CONFIGS / "meta-llama__Llama-3.1-8B.json").read_text())
    buffers = vllm_weight_buffers(llama, dtype_bytes=2, vocab_tensors=[VocabTensor(128256, 128256, 4096)] * 2)
    assert buffers.total_bytes == 131072 * 128 * 2 and buffers.method == "computed"
    assert buffers.detail() == {"rotary cos/sin cache": 32 * MIB}
    # a pipeline stage without decoder layers (none in vLLM's layout) holds no rotary cache
    assert vllm_weight_buffers(llama, dtype_bytes=2, holds_layers=False).total_bytes == 0
