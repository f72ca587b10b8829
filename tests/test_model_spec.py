"""kvadvise.model.spec against real configs (tests/data/configs, sources in SOURCES.md there).

Every expected number below was read by hand from the config file it tests (or derived from it by the
vLLM rule named next to it); a few cross-checks rebuild the same config with transformers' own classes
as a second method. Configs for which no public copy exists (gpt_bigcode MQA, Mistral-7B-v0.1's uniform
window) are built here and say so; falcon-7b's MQA is tested on its real early hub config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kvadvise.errors import InputError
from kvadvise.model.spec import LayerKind, ModelSpec, load_model_spec, spec_from_config

CONFIGS = Path(__file__).parent / "data" / "configs"
REPO = Path(__file__).resolve().parent.parent

FULL, SLIDING, CHUNKED, MLA, MAMBA, NONE = (LayerKind.FULL, LayerKind.SLIDING, LayerKind.CHUNKED, LayerKind.MLA,
                                            LayerKind.MAMBA, LayerKind.NONE)


def load(name: str) -> ModelSpec:
    return load_model_spec(str(CONFIGS / name))


def raw(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def kinds(spec: ModelSpec) -> Counter:
    return Counter(layer.kind for layer in spec.layers)


def indices(spec: ModelSpec, kind: LayerKind) -> list[int]:
    return [layer.index for layer in spec.layers if layer.kind is kind]


def assert_consistent(spec: ModelSpec) -> None:
    assert len(spec.layers) == spec.num_layers
    assert [layer.index for layer in spec.layers] == list(range(spec.num_layers))
    for layer in spec.layers:
        if layer.kind in (FULL, SLIDING, CHUNKED, MLA):
            assert layer.num_kv_heads and layer.head_size
        assert (layer.sliding_window is not None) == (layer.kind is SLIDING)
        assert (layer.attention_chunk_size is not None) == (layer.kind is CHUNKED)
        assert (layer.mamba is not None) == (layer.kind is MAMBA)


# --- dense and GQA ---------------------------------------------------------------------------------------------

def test_llama2_7b_is_multi_head():
    spec = load("meta-llama__Llama-2-7b-hf.json")
    assert_consistent(spec)
    assert (spec.model_type, spec.num_layers, spec.num_attention_heads, spec.num_kv_heads) == ("llama", 32, 32, 32)
    assert spec.head_size == 4096 // 32 == 128
    assert kinds(spec) == {FULL: 32}
    assert all(layer.num_kv_heads == 32 and layer.head_size == 128 for layer in spec.layers)
    assert (spec.dtype, spec.config_dtype) == ("float16", "float16")
    assert spec.max_model_len == 4096
    assert (spec.vocab_size, spec.hidden_size, spec.intermediate_size) == (32000, 4096, 11008)
    assert spec.tie_word_embeddings is False and spec.num_experts is None and spec.quantization is None
    assert spec.notes == ()


@pytest.mark.parametrize("name, layers, hidden, kv, inter", [
    ("meta-llama__Llama-3.1-8B.json", 32, 4096, 8, 14336),
    ("meta-llama__Llama-3.1-70B.json", 80, 8192, 8, 28672),
    ("meta-llama__Llama-3.1-405B.json", 126, 16384, 8, 53248),
])
def test_llama31_gqa_and_llama3_rope_not_scaling_max_len(name, layers, hidden, kv, inter):
    spec = load(name)
    assert_consistent(spec)
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.head_size) == (layers, hidden, kv, 128)
    assert spec.intermediate_size == inter and spec.vocab_size == 128256
    assert kinds(spec) == {FULL: layers}
    # rope_type llama3 (factor 8) is not applied by vLLM _get_and_verify_max_len
    assert spec.max_model_len == 131072
    assert spec.dtype == "bfloat16" and spec.tie_word_embeddings is False


def test_llama32_1b_head_dim_64_and_tied_embeddings():
    spec = load("meta-llama__Llama-3.2-1B.json")
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (16, 32, 8, 64)
    assert spec.tie_word_embeddings is True
    assert spec.max_model_len == 131072  # llama3 factor 32 not applied


def test_qwen25_sliding_window_disabled_by_use_sliding_window_false():
    spec = load("Qwen__Qwen2.5-7B.json")
    assert raw("Qwen__Qwen2.5-7B.json")["sliding_window"] == 131072
    assert kinds(spec) == {FULL: 28}
    assert (spec.num_kv_heads, spec.head_size, spec.vocab_size) == (4, 3584 // 28, 152064)
    assert spec.max_model_len == 131072
    # max_window_layers (28) equals the layer count here, so edit it to see use_sliding_window decide alone
    edited = dict(raw("Qwen__Qwen2.5-7B.json"), max_window_layers=0)
    assert kinds(spec_from_config(edited, model_id="q")) == {FULL: 28}
    assert kinds(spec_from_config(dict(edited, use_sliding_window=True), model_id="q")) == {SLIDING: 28}


def test_qwen25_72b_gqa_window_off():
    spec = load("Qwen__Qwen2.5-72B.json")
    assert_consistent(spec)
    assert raw("Qwen__Qwen2.5-72B.json")["use_sliding_window"] is False
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (80, 64, 8, 8192 // 64)
    assert kinds(spec) == {FULL: 80}
    assert (spec.intermediate_size, spec.vocab_size, spec.max_model_len) == (29568, 152064, 131072)


def test_qwen3_06b_explicit_head_dim_and_tied_embeddings():
    spec = load("Qwen__Qwen3-0.6B.json")
    assert_consistent(spec)
    # head_dim 128 is explicit; hidden_size // heads would give 1024 // 16 = 64
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (28, 16, 8, 128)
    assert spec.tie_word_embeddings is True and spec.max_model_len == 40960 and kinds(spec) == {FULL: 28}


def test_qwen3_8b():
    spec = load("Qwen__Qwen3-8B.json")
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size, spec.max_model_len) == (36, 8, 128, 40960)
    assert kinds(spec) == {FULL: 36} and spec.num_experts is None


def test_qwen3_30b_a3b_moe_uses_explicit_head_dim():
    spec = load("Qwen__Qwen3-30B-A3B.json")
    # head_dim 128 is explicit; hidden_size // heads would give 2048 // 32 = 64
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size) == (48, 4, 128)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (128, 8, 768)
    assert spec.max_model_len == 40960 and kinds(spec) == {FULL: 48}


def test_mixtral_8x7b_experts_use_intermediate_size():
    spec = load("mistralai__Mixtral-8x7B-v0.1.json")
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size) == (32, 8, 128)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (8, 2, 14336)
    assert kinds(spec) == {FULL: 32}  # "sliding_window": null
    assert spec.max_model_len == 32768


def test_mixtral_8x22b():
    spec = load("mistralai__Mixtral-8x22B-v0.1.json")
    assert_consistent(spec)
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (56, 48, 8, 6144 // 48)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (8, 2, 16384)
    assert kinds(spec) == {FULL: 56} and spec.max_model_len == 65536 and spec.vocab_size == 32000


def test_mistral_v03_dumped_has_no_window():
    spec = load("mistralai__Mistral-7B-Instruct-v0.3.DUMPED.json")
    assert kinds(spec) == {FULL: 32} and spec.max_model_len == 32768 and spec.num_kv_heads == 8


def test_mistral_v01_style_uniform_window_self_built():
    # Built here: no clean copy of mistralai/Mistral-7B-v0.1's config exists in the shared folder. Its
    # architecture fields (uniform 4096 window, 32 layers, 8 kv heads) as the model card documents them.
    config = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
              "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 8, "max_position_embeddings": 32768, "sliding_window": 4096,
              "vocab_size": 32000, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, model_id="mistral-v0.1-like")
    assert kinds(spec) == {SLIDING: 32}
    assert {layer.sliding_window for layer in spec.layers} == {4096}


def test_qwen2_use_sliding_window_true_slides_from_max_window_layers_self_built():
    # Built here (transformers Qwen2Config rule): sliding iff use_sliding_window and i >= max_window_layers.
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1024,
              "num_attention_heads": 16, "num_key_value_heads": 2, "num_hidden_layers": 8, "vocab_size": 1000,
              "use_sliding_window": True, "sliding_window": 512, "max_window_layers": 5, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, model_id="qwen2-sliding")
    assert indices(spec, FULL) == [0, 1, 2, 3, 4] and indices(spec, SLIDING) == [5, 6, 7]


# --- MQA (self-built: no public gpt_bigcode / falcon config was found) -----------------------------------------

def test_gpt_bigcode_multi_query_has_one_kv_head_self_built():
    # Built here with starcoder-like sizes; gpt_bigcode names its fields n_embd / n_head / n_layer / n_positions.
    config = {"architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode", "multi_query": True,
              "n_embd": 6144, "n_head": 48, "n_layer": 40, "n_positions": 8192, "vocab_size": 49152,
              "torch_dtype": "float32"}
    spec = spec_from_config(config, model_id="bigcode-like")
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (40, 48, 1, 128)
    assert all(layer.num_kv_heads == 1 for layer in spec.layers)
    assert spec.max_model_len == 8192 and spec.intermediate_size == 4 * 6144
    assert (spec.config_dtype, spec.dtype) == ("float32", "bfloat16")  # vLLM >= 0.9.1 auto rule


def test_falcon_7b_real_early_config_is_multi_query():
    """tiiuae/falcon-7b's early config (RefinedWebModel, RWForCausalLM): multi_query true without
    new_decoder_architecture -> one KV head (vLLM get_total_num_kv_heads); head size 4544 // 71 = 64; no
    max_position_embeddings, so transformers' default 2048, noted."""
    spec = load("tiiuae__falcon-7b.json")
    assert_consistent(spec)
    assert raw("tiiuae__falcon-7b.json")["multi_query"] is True
    assert (spec.model_type, spec.num_layers, spec.num_attention_heads) == ("RefinedWebModel", 32, 71)
    assert (spec.num_kv_heads, spec.head_size, spec.vocab_size, spec.hidden_size) == (1, 64, 65024, 4544)
    assert kinds(spec) == {FULL: 32} and all(layer.num_kv_heads == 1 for layer in spec.layers)
    assert spec.max_model_len == 2048 and spec.dtype == "bfloat16"
    assert "max_position_embeddings=2048" in " ".join(spec.notes)
    # RWForCausalLM is a vLLM registry name (loaded as FalconForCausalLM): no unknown-architecture note
    assert not any("not a vLLM built-in name" in note for note in spec.notes)


def test_falcon_multi_query_and_new_decoder_architecture_self_built():
    # Built here with falcon-7b's sizes (71 heads, 4544 hidden, multi_query) and a falcon-40b-style variant
    # where new_decoder_architecture makes vLLM ignore multi_query and read num_kv_heads.
    config = {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544,
              "num_attention_heads": 71, "num_hidden_layers": 32, "multi_query": True,
              "new_decoder_architecture": False, "vocab_size": 65024, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, model_id="falcon-7b-like")
    assert (spec.num_kv_heads, spec.head_size, spec.max_model_len) == (1, 64, 2048)
    assert "max_position_embeddings=2048" in " ".join(spec.notes)  # FalconConfig default, noted
    config40 = dict(config, num_attention_heads=128, hidden_size=8192, new_decoder_architecture=True, num_kv_heads=8)
    assert spec_from_config(config40, model_id="falcon-40b-like").num_kv_heads == 8


# --- sliding window families ------------------------------------------------------------------------------------

def test_gemma2_9b_even_layers_slide():
    spec = load("google__gemma-2-9b-it.json")
    assert_consistent(spec)
    assert spec.num_layers == 42
    assert indices(spec, SLIDING) == list(range(0, 42, 2))  # transformers Gemma2Config: (i + 1) % 2 -> sliding
    assert indices(spec, FULL) == list(range(1, 42, 2))
    assert {layer.sliding_window for layer in spec.layers if layer.kind is SLIDING} == {4096}
    assert (spec.num_kv_heads, spec.head_size, spec.max_model_len, spec.vocab_size) == (8, 256, 8192, 256000)
    assert spec.tie_word_embeddings is True  # Gemma2Config default (key absent), noted
    assert any("tie_word_embeddings=True" in note for note in spec.notes)


def test_gemma3_4b_sparse_text_config_takes_transformers_defaults():
    spec = load("google__gemma-3-4b-it.json")
    assert_consistent(spec)
    assert (spec.top_model_type, spec.model_type, spec.architectures) == (
        "gemma3", "gemma3_text", ("Gemma3ForConditionalGeneration",))
    assert (spec.num_layers, spec.hidden_size, spec.intermediate_size) == (34, 2560, 10240)
    # not in the file: Gemma3TextConfig defaults (transformers 5.23)
    assert (spec.num_attention_heads, spec.num_kv_heads, spec.head_size, spec.vocab_size) == (8, 4, 256, 262208)
    assert indices(spec, FULL) == [5, 11, 17, 23, 29]  # sliding_window_pattern 6: (i + 1) % 6 == 0 is global
    assert kinds(spec) == {SLIDING: 29, FULL: 5}
    assert {layer.sliding_window for layer in spec.layers if layer.kind is SLIDING} == {1024}
    # max_position_embeddings default 131072; the linear factor 8 is not applied to gemma3 (vLLM)
    assert spec.max_model_len == 131072
    assert spec.dtype == "bfloat16" and spec.tie_word_embeddings is True
    note = " ".join(spec.notes)
    assert "transformers 5.23 defaults of gemma3_text" in note and "num_key_value_heads=4" in note


def test_gemma3_27b():
    spec = load("google__gemma-3-27b-it.json")
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (62, 32, 16, 128)
    assert indices(spec, FULL) == list(range(5, 62, 6)) and kinds(spec) == {SLIDING: 52, FULL: 10}
    assert spec.max_model_len == 131072


@pytest.mark.parametrize("name, layers, experts", [("openai__gpt-oss-20b.json", 24, 32),
                                                  ("openai__gpt-oss-120b.json", 36, 128)])
def test_gpt_oss_alternating_window_moe_mxfp4(name, layers, experts):
    spec = load(name)
    assert_consistent(spec)
    assert spec.num_layers == layers
    assert indices(spec, SLIDING) == list(range(0, layers, 2)) and indices(spec, FULL) == list(range(1, layers, 2))
    assert {layer.sliding_window for layer in spec.layers if layer.kind is SLIDING} == {128}
    assert (spec.num_kv_heads, spec.head_size) == (8, 64)
    assert (spec.num_experts, spec.num_experts_per_token) == (experts, 4)
    assert spec.quantization.method == "mxfp4" and spec.quantization.weight_bits == 4
    assert spec.max_model_len == 4096 * 32  # yarn: original_max_position_embeddings * factor
    assert spec.config_dtype is None and spec.dtype == "bfloat16"  # no dtype key: float32 -> bfloat16, noted
    assert any("no dtype" in note for note in spec.notes)


# --- MLA ---------------------------------------------------------------------------------------------------------

def test_deepseek_v2_lite_mla():
    spec = load("deepseek-ai__DeepSeek-V2-Lite-Chat.json")
    assert_consistent(spec)
    assert spec.is_mla and kinds(spec) == {MLA: 27}
    assert (spec.num_kv_heads, spec.head_size) == (1, 512 + 64)
    assert all(layer.num_kv_heads == 1 and layer.head_size == 576 for layer in spec.layers)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (64, 6, 1408)
    assert spec.max_model_len == 4096 * 40 == 163840


@pytest.mark.parametrize("name", ["deepseek-ai__DeepSeek-V3.json", "deepseek-ai__DeepSeek-R1.json"])
def test_deepseek_v3_r1_mla_fp8_and_mtp_excluded(name):
    spec = load(name)
    assert spec.is_mla and spec.num_layers == 61 and kinds(spec) == {MLA: 61}
    assert spec.num_mtp_layers == 1 and any("multi-token-prediction" in note for note in spec.notes)
    assert (spec.num_kv_heads, spec.head_size, spec.num_attention_heads) == (1, 576, 128)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (256, 8, 2048)
    assert spec.quantization.method == "fp8" and spec.quantization.raw["weight_block_size"] == [128, 128]
    assert spec.max_model_len == 163840


def test_kimi_k2_instruct():
    spec = load("moonshotai__Kimi-K2-Instruct.json")
    assert spec.model_type == "kimi_k2" and spec.is_mla and kinds(spec) == {MLA: 61}
    assert (spec.num_experts, spec.num_attention_heads, spec.head_size) == (384, 64, 576)
    assert spec.num_mtp_layers == 0 and spec.max_model_len == 4096 * 32


def test_kimi_k25_nested_mla_with_int4_compressed_tensors():
    spec = load("moonshotai__Kimi-K2.5.json")
    assert (spec.top_model_type, spec.model_type) == ("kimi_k25", "kimi_k2")
    assert spec.is_mla and kinds(spec) == {MLA: 61} and spec.head_size == 576
    quant = spec.quantization
    assert (quant.method, quant.weight_bits, quant.group_size, quant.kv_cache_dtype) == (
        "compressed-tensors", 4, 32, None)
    assert spec.max_model_len == 4096 * 64 == 262144
    assert (spec.config_dtype, spec.dtype) == ("bfloat16", "bfloat16")  # the `dtype` key (transformers 5)


# --- chunked local attention ----------------------------------------------------------------------------------

def test_llama4_scout_trimmed_chunked_every_fourth_global():
    spec = load("meta-llama__Llama-4-Scout-17B-16E-Instruct.TRIMMED.json")
    assert_consistent(spec)
    assert "no_rope_layers" not in raw("meta-llama__Llama-4-Scout-17B-16E-Instruct.TRIMMED.json")["text_config"]
    assert spec.model_type == "llama4_text" and spec.num_layers == 48
    assert indices(spec, FULL) == list(range(3, 48, 4))  # NoPE layers: (i + 1) % 4 == 0
    assert kinds(spec) == {CHUNKED: 36, FULL: 12}
    assert {layer.attention_chunk_size for layer in spec.layers if layer.kind is CHUNKED} == {8192}
    assert (spec.num_kv_heads, spec.head_size) == (8, 128)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (16, 1, 8192)
    assert spec.max_model_len == 10485760  # llama3 rope: no factor
    assert any("no_rope_layers not in the config" in note for note in spec.notes)


def test_llama4_maverick_trimmed_same_layer_pattern_128_experts():
    spec = load("meta-llama__Llama-4-Maverick-17B-128E-Instruct.TRIMMED.json")
    assert_consistent(spec)
    assert raw("meta-llama__Llama-4-Maverick-17B-128E-Instruct.TRIMMED.json")["text_config"]["interleave_moe_layer_step"] == 2
    assert spec.model_type == "llama4_text" and spec.num_layers == 48
    assert indices(spec, FULL) == list(range(3, 48, 4)) and kinds(spec) == {CHUNKED: 36, FULL: 12}
    assert {layer.attention_chunk_size for layer in spec.layers if layer.kind is CHUNKED} == {8192}
    assert (spec.num_kv_heads, spec.head_size, spec.vocab_size) == (8, 128, 202048)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (128, 1, 8192)
    assert spec.max_model_len == 1048576  # rope_scaling null
    assert any("no_rope_layers not in the config" in note for note in spec.notes)


def test_llama4_explicit_no_rope_layers_win():
    config = raw("meta-llama__Llama-4-Scout-17B-16E-Instruct.TRIMMED.json")
    config["text_config"]["num_hidden_layers"] = 4
    config["text_config"]["no_rope_layers"] = [1, 0, 1, 1]
    spec = spec_from_config(config, model_id="llama4-edited")
    assert [layer.kind for layer in spec.layers] == [CHUNKED, FULL, CHUNKED, CHUNKED]
    assert not any("no_rope_layers not in the config" in note for note in spec.notes)


# --- hybrid: linear attention / Mamba ---------------------------------------------------------------------------

def test_qwen3_next_gated_delta_net_every_fourth_full():
    spec = load("Qwen__Qwen3-Next-80B-A3B-Thinking.json")
    assert_consistent(spec)
    assert indices(spec, FULL) == list(range(3, 48, 4)) and kinds(spec) == {MAMBA: 36, FULL: 12}
    assert (spec.num_kv_heads, spec.head_size) == (2, 256)
    mixer = spec.layers[0].mamba
    assert (mixer.mixer, mixer.conv_kernel, mixer.num_k_heads, mixer.num_v_heads, mixer.head_k_dim,
            mixer.head_v_dim, mixer.ssm_state_dtype, mixer.ssm_state_dtype_from) == (
        "gated_delta_net", 4, 16, 32, 128, 128, None, None)
    assert (spec.num_experts, spec.num_experts_per_token, spec.moe_intermediate_size) == (512, 10, 512)
    assert spec.max_model_len == 262144


def test_qwen35_nested_layer_types_and_ssm_dtype():
    spec = load("Qwen__Qwen3.5-35B-A3B.json")
    assert spec.model_type == "qwen3_5_moe_text" and spec.num_layers == 40
    assert indices(spec, FULL) == list(range(3, 40, 4)) and kinds(spec) == {MAMBA: 30, FULL: 10}
    assert spec.layers[0].mamba.ssm_state_dtype == "float32"  # text_config mamba_ssm_dtype
    assert spec.num_mtp_layers == 1 and spec.dtype == "bfloat16" and spec.max_model_len == 262144


def test_nemotron_h_56b_pattern_and_infinity():
    spec = load("nvidia__Nemotron-H-56B-Base-8K.json")  # the file holds a bare Infinity
    assert_consistent(spec)
    assert spec.text_config["time_step_limit"][1] == float("inf")
    assert spec.num_layers == 118
    assert kinds(spec) == {MAMBA: 54, NONE: 54, FULL: 10}
    assert indices(spec, FULL) == [7, 18, 29, 40, 51, 62, 73, 84, 95, 106]
    attention = spec.layers[7]
    assert (attention.num_kv_heads, attention.head_size) == (8, 128)
    mixer = spec.layers[0].mamba
    assert (mixer.mixer, mixer.conv_kernel, mixer.num_heads, mixer.head_dim, mixer.state_size, mixer.n_groups,
            mixer.intermediate_size) == ("mamba2", 4, 256, 64, 256, 8, 256 * 64)
    assert mixer.intermediate_size == 2 * 8192  # expand * hidden_size, a second route to the same width
    # not in the file: unset (vLLM <= 0.12 used the model dtype); transformers 5's class default reported apart
    assert (mixer.ssm_state_dtype, mixer.ssm_state_dtype_from, mixer.ssm_state_dtype_class_default) == (
        None, None, "float32")
    assert any("vLLM up to 0.12 keeps NemotronH SSM state in the model dtype" in note for note in spec.notes)
    assert spec.max_model_len == 8192


def test_nemotron3_nano_moe_pattern_and_explicit_head_dim():
    spec = load("nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json")
    assert kinds(spec) == {MAMBA: 23, NONE: 23, FULL: 6}  # E (MoE) layers keep no KV
    assert spec.head_size == 128  # head_dim; hidden_size // heads would be 2688 // 32 = 84
    assert (spec.layers[0].mamba.ssm_state_dtype, spec.layers[0].mamba.ssm_state_dtype_from) == ("float32", "config")
    assert (spec.num_experts, spec.num_experts_per_token) == (128, 6)


def test_nemotron_super_block_configs_no_op_attention_has_no_kv():
    spec = load("nvidia__Llama-3_3-Nemotron-Super-49B-v1.json")
    assert_consistent(spec)
    blocks = raw("nvidia__Llama-3_3-Nemotron-Super-49B-v1.json")["block_configs"]
    no_op = [i for i, block in enumerate(blocks) if block["attention"]["no_op"]]
    assert len(no_op) == 31 and indices(spec, NONE) == no_op
    assert kinds(spec) == {FULL: 49, NONE: 31}
    assert {(layer.num_kv_heads, layer.head_size) for layer in spec.layers if layer.kind is FULL} == {(64 // 8, 128)}
    assert spec.num_kv_heads == 8 and spec.intermediate_size is None  # heterogeneous FFNs
    assert spec.max_model_len == 131072


def test_nemotron_nas_replace_with_linear_is_no_kv():
    config = raw("nvidia__Llama-3_3-Nemotron-Super-49B-v1.json")
    config["block_configs"][2]["attention"]["replace_with_linear"] = True
    spec = spec_from_config(config, model_id="nas-edited")
    assert spec.layers[2].kind is NONE and kinds(spec) == {FULL: 48, NONE: 32}
    assert any("replaced by a linear layer" in note for note in spec.notes)


# --- quantization, multimodal, old families ----------------------------------------------------------------------

def test_modelopt_fp8_directory_reads_hf_quant_config(tmp_path):
    (tmp_path / "config.json").write_text((CONFIGS / "nvidia__Llama-3.1-70B-Instruct-FP8.json").read_text())
    (tmp_path / "hf_quant_config.json").write_text(
        (CONFIGS / "nvidia__Llama-3.1-70B-Instruct-FP8.hf_quant_config.json").read_text())
    spec = load_model_spec(str(tmp_path))
    quant = spec.quantization
    assert (quant.method, quant.weight_bits, quant.kv_cache_dtype) == ("modelopt", 8, "fp8")
    assert spec.config_path == str(tmp_path / "config.json")
    assert (spec.num_layers, spec.num_kv_heads, spec.dtype) == (80, 8, "bfloat16")
    # naming the directory's config.json reads the companion file too
    assert load_model_spec(str(tmp_path / "config.json")).quantization.kv_cache_dtype == "fp8"
    # the same config.json without its companion file: no quantization known
    assert load("nvidia__Llama-3.1-70B-Instruct-FP8.json").quantization is None


def test_gptq_and_fp8_block_quantization():
    gptq = load("TheBloke__Genz-70b-GPTQ.json").quantization
    assert (gptq.method, gptq.weight_bits, gptq.group_size) == ("gptq", 4, 128)
    fp8 = load("Qwen__Qwen3-30B-A3B-FP8.json").quantization
    assert (fp8.method, fp8.weight_bits, fp8.kv_cache_dtype) == ("fp8", 8, None)
    assert fp8.raw["weight_block_size"] == [128, 128]


@pytest.mark.parametrize("quantization_config, expected", [
    ({"quant_method": "awq", "w_bit": 4, "q_group_size": 128, "zero_point": True}, ("awq", 4, 128, None)),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, ("bitsandbytes", 4, None, None)),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 8}}},
      "kv_cache_scheme": {"num_bits": 8, "type": "float"}}, ("compressed-tensors", 8, None, "fp8")),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_quant_algo": None}, ("modelopt_fp4", 4, 16, None)),
])
def test_quantization_variants_self_built(quantization_config, expected):
    # Built here: the awq / bitsandbytes / llm-compressor FP8-KV / NVFP4 keys as those tools write them.
    config = dict(raw("meta-llama__Llama-3.1-8B.json"), quantization_config=quantization_config)
    quant = spec_from_config(config, model_id="q").quantization
    assert (quant.method, quant.weight_bits, quant.group_size, quant.kv_cache_dtype) == expected


def test_qwen3_vl_nested_dtype_from_text_config():
    spec = load("Qwen__Qwen3-VL-8B-Instruct.json")
    assert (spec.top_model_type, spec.model_type) == ("qwen3_vl", "qwen3_vl_text")
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size, spec.vocab_size) == (36, 8, 128, 151936)
    assert spec.config_dtype == "bfloat16" and spec.max_model_len == 262144 and kinds(spec) == {FULL: 36}


def test_gpt2_large_aliases():
    spec = load("openai-community__gpt2-large.json")
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads, spec.head_size) == (
        36, 1280, 20, 20, 64)
    assert spec.max_model_len == 1024 and spec.vocab_size == 50257 and spec.intermediate_size == 5120
    assert spec.tie_word_embeddings is True  # GPT2Config default, noted


def test_opt_edited_architecture_is_described_from_model_type():
    # Decision: an architecture name vLLM does not ship (vLLM's out-of-tree test class) is still
    # described from model_type "opt", with a note that vLLM needs the class registered.
    spec = load("facebook__opt-125m.EDITED.json")
    assert spec.architectures == ("MyOPTForCausalLM",)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size, spec.intermediate_size) == (12, 12, 64, 3072)
    assert (spec.dtype, spec.max_model_len) == ("float16", 2048)
    assert any("MyOPTForCausalLM" in note for note in spec.notes)


def test_gemma_float16_config_resolves_to_bfloat16():
    config = dict(raw("google__gemma-2-9b-it.json"), torch_dtype="float16")
    spec = spec_from_config(config, model_id="gemma2-fp16")
    assert (spec.config_dtype, spec.dtype) == ("float16", "bfloat16")


@pytest.mark.parametrize("rope, expected", [
    ({"rope_type": "linear", "factor": 4.0}, 4 * 4096),
    ({"type": "dynamic", "factor": 2.0}, 2 * 4096),   # vLLM applies the factor for "dynamic" too
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, 4 * 2048),
    ({"rope_type": "llama3", "factor": 8.0}, 4096),
    ({"rope_type": "default"}, 4096),
    ({"rope_type": "longrope", "factor": 4.0}, 4096),
])
def test_max_model_len_rope_rules(rope, expected):
    config = dict(raw("meta-llama__Llama-2-7b-hf.json"), rope_scaling=rope)
    assert spec_from_config(config, model_id="rope").max_model_len == expected


def test_max_model_len_takes_smallest_key_and_model_max_length_wins():
    base = raw("meta-llama__Llama-2-7b-hf.json")
    assert spec_from_config(dict(base, seq_length=2048), model_id="m").max_model_len == 2048
    assert spec_from_config(dict(base, model_max_length=131072), model_id="m").max_model_len == 131072


# --- resolution: directory, file of any name, hub cache ----------------------------------------------------------

def _fake_hub_snapshot(repo_id: str, files: dict[str, str]) -> Path:
    cache = Path(os.environ["HF_HUB_CACHE"])
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_hub_id_resolves_from_local_cache_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    snapshot = _fake_hub_snapshot("meta-llama/Llama-3.1-8B", {
        "config.json": (CONFIGS / "meta-llama__Llama-3.1-8B.json").read_text()})
    spec = load_model_spec("meta-llama/Llama-3.1-8B")
    assert spec.model_id == "meta-llama/Llama-3.1-8B"
    assert Path(spec.config_path) == snapshot / "config.json"
    assert (spec.num_layers, spec.num_kv_heads) == (32, 8)


def test_hub_id_picks_up_hf_quant_config_from_cache():
    _fake_hub_snapshot("nvidia/Llama-3.1-70B-Instruct-FP8", {
        "config.json": (CONFIGS / "nvidia__Llama-3.1-70B-Instruct-FP8.json").read_text(),
        "hf_quant_config.json": (CONFIGS / "nvidia__Llama-3.1-70B-Instruct-FP8.hf_quant_config.json").read_text()})
    assert load_model_spec("nvidia/Llama-3.1-70B-Instruct-FP8").quantization.kv_cache_dtype == "fp8"


def test_json_file_of_any_name(tmp_path):
    path = tmp_path / "my model.cfg"
    path.write_text((CONFIGS / "Qwen__Qwen3-8B.json").read_text())
    assert load_model_spec(str(path)).num_layers == 36


# --- fail closed: the bad-input table ---------------------------------------------------------------------------

def _write(tmp_path: Path, text: str, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


LLAMA = json.loads((CONFIGS / "meta-llama__Llama-3.1-8B.json").read_text())


@pytest.mark.parametrize("case, make, message", [
    ("missing path", lambda t: str(t / "nope" / "config.json"), "no such file or directory"),
    ("missing relative json", lambda t: "./does-not-exist.json", "no such file or directory"),
    ("directory without config.json", lambda t: str(t), "has no config.json"),
    ("malformed JSON", lambda t: _write(t, '{"model_type": "llama",'), "malformed JSON"),
    ("JSON that is not an object", lambda t: _write(t, "[1, 2]"), "not a JSON object"),
    ("no layer count", lambda t: _write(t, json.dumps({k: v for k, v in LLAMA.items() if k != "num_hidden_layers"})),
     "num_hidden_layers"),
    ("zero layers", lambda t: _write(t, json.dumps(dict(LLAMA, num_hidden_layers=0))), "positive integer"),
    ("layer count as text", lambda t: _write(t, json.dumps(dict(LLAMA, num_hidden_layers="32"))), "positive integer"),
    ("unknown model with no usable fields",
     lambda t: _write(t, json.dumps({"model_type": "mystery", "architectures": ["MysteryForCausalLM"]})),
     "num_hidden_layers"),
    ("unknown hybrid layout",
     lambda t: _write(t, json.dumps(dict(LLAMA, model_type="mystery", layers_block_type=["attention"] * 32))),
     "layers_block_type"),
    ("unknown layer type", lambda t: _write(t, json.dumps(dict(LLAMA, layer_types=["weird_attention"] * 32))),
     "weird_attention"),
    ("layer_types of the wrong length", lambda t: _write(t, json.dumps(dict(LLAMA, layer_types=["full_attention"]))),
     "1 entries for 32 layers"),
    ("unknown dtype", lambda t: _write(t, json.dumps(dict(LLAMA, torch_dtype="int3"))), "unknown dtype"),
    ("text_config not an object", lambda t: _write(t, json.dumps(dict(LLAMA, text_config=[1]))), "text_config"),
    ("unsupported: gemma-4", lambda t: str(CONFIGS / "google__gemma-4-26B-A4B.json"), "gemma4_text"),
    ("unsupported: DeepSeek-V3.2 indexer", lambda t: str(CONFIGS / "deepseek-ai__DeepSeek-V3.2.json"), "indexer"),
    ("encoder-decoder", lambda t: _write(t, json.dumps(dict(LLAMA, is_encoder_decoder=True))), "encoder-decoder"),
    ("hub id not cached", lambda t: "someorg/not-cached-model", "not in the local Hugging Face cache"),
    ("nemotron_h pattern too short",
     lambda t: _write(t, json.dumps(dict(json.loads((CONFIGS / "nvidia__Nemotron-H-56B-Base-8K.json").read_text()),
                                         hybrid_override_pattern="M*"))), "2 entries for 118 layers"),
    ("gated delta net without its fields",
     lambda t: _write(t, json.dumps({k: v for k, v in json.loads(
         (CONFIGS / "Qwen__Qwen3-Next-80B-A3B-Thinking.json").read_text()).items() if k != "linear_num_key_heads"})),
     "linear_num_key_heads"),
])
def test_bad_input_fails_closed_with_one_line(tmp_path, case, make, message):
    with pytest.raises(InputError) as caught:
        load_model_spec(make(tmp_path))
    error = caught.value
    assert error.exit_code == 2
    assert message in error.message, (case, error.message)
    assert "\n" not in error.message


# --- speed: no torch on the normal path -------------------------------------------------------------------------

def test_local_llama_config_loads_without_torch_or_transformers():
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from kvadvise.model.spec import load_model_spec\n"
        f"spec = load_model_spec({str(CONFIGS / 'meta-llama__Llama-3.1-8B.json')!r})\n"
        "elapsed = time.perf_counter() - start\n"
        "print(spec.num_layers, 'torch' in sys.modules, 'transformers' in sys.modules, round(elapsed, 3))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    layers, torch_loaded, transformers_loaded, elapsed = result.stdout.split()
    assert (layers, torch_loaded, transformers_loaded) == ("32", "False", "False")
    assert float(elapsed) < 0.5


# --- second method: transformers' own config classes ---------------------------------------------------------------

def test_defaults_table_matches_installed_transformers():
    from transformers import CONFIG_MAPPING

    from kvadvise.model.defaults import CLASS_DEFAULTS, SSM_STATE_DTYPE_DEFAULTS

    for model_type, defaults in CLASS_DEFAULTS.items():
        config_class = CONFIG_MAPPING[model_type]
        for key, value in defaults.items():
            assert getattr(config_class, key) == value, (model_type, key)
    for model_type, value in SSM_STATE_DTYPE_DEFAULTS.items():
        assert CONFIG_MAPPING[model_type].mamba_ssm_cache_dtype == value


def _transformers_layer_types(model_type: str, fields: dict) -> list[str]:
    from transformers import CONFIG_MAPPING

    return list(CONFIG_MAPPING[model_type](**fields).layer_types)


_HF_TO_KIND = {"full_attention": FULL, "sliding_attention": SLIDING, "chunked_attention": CHUNKED,
               "linear_attention": MAMBA}


@pytest.mark.parametrize("name", [
    "google__gemma-2-9b-it.json", "google__gemma-3-4b-it.json", "google__gemma-3-27b-it.json",
    "Qwen__Qwen3-Next-80B-A3B-Thinking.json", "meta-llama__Llama-4-Scout-17B-16E-Instruct.TRIMMED.json",
    "openai__gpt-oss-20b.json", "Qwen__Qwen2.5-7B.json",
])
def test_layer_kinds_match_transformers_layer_types(name):
    config = raw(name)
    fields = config.get("text_config", config)
    model_type = fields.get("model_type") or {"gemma3": "gemma3_text"}[config["model_type"]]
    fields = {k: v for k, v in fields.items() if k not in ("rope_scaling", "quantization_config")}
    expected = [_HF_TO_KIND[t] for t in _transformers_layer_types(model_type, fields)]
    assert [layer.kind for layer in load(name).layers] == expected


def test_gemma3_sparse_text_config_matches_transformers_values():
    from transformers import CONFIG_MAPPING

    text = CONFIG_MAPPING["gemma3_text"](**{k: v for k, v in raw("google__gemma-3-4b-it.json")["text_config"].items()
                                            if k != "rope_scaling"})
    spec = load("google__gemma-3-4b-it.json")
    assert (spec.num_attention_heads, spec.num_kv_heads, spec.head_size, spec.vocab_size, spec.max_model_len) == (
        text.num_attention_heads, text.num_key_value_heads, text.head_dim, text.vocab_size,
        text.max_position_embeddings)


# --- hybrids without a public config here (self-built, from the published architecture fields) ------------------

def test_jamba_mamba1_every_eighth_layer_attention_self_built():
    # Built here: no Jamba config exists in the shared folder. Fields as ai21labs/Jamba-v0.1 names them.
    config = {"architectures": ["JambaForCausalLM"], "model_type": "jamba", "hidden_size": 4096,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536,
              "attn_layer_period": 8, "attn_layer_offset": 4, "expert_layer_period": 2, "expert_layer_offset": 1,
              "num_experts": 16, "num_experts_per_tok": 2, "mamba_d_state": 16, "mamba_d_conv": 4,
              "mamba_expand": 2, "max_position_embeddings": 262144, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, model_id="jamba-like")
    assert_consistent(spec)
    assert indices(spec, FULL) == [4, 12, 20, 28] and kinds(spec) == {MAMBA: 28, FULL: 4}
    mixer = spec.layers[0].mamba
    assert (mixer.mixer, mixer.conv_kernel, mixer.state_size, mixer.intermediate_size) == ("mamba1", 4, 16, 8192)
    assert (spec.num_kv_heads, spec.head_size, spec.num_experts) == (8, 128, 16)


def test_granite_hybrid_mamba2_layer_types_self_built():
    # Built here: no Granite-4.0-H config exists in the shared folder. Field names as transformers'
    # GraniteMoeHybridConfig reads them; "mamba" / "attention" layer_types as the hub configs write them.
    layer_types = ["attention" if i in (5, 15, 25, 35) else "mamba" for i in range(40)]
    config = {"architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
              "hidden_size": 4096, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 100352, "layer_types": layer_types, "mamba_n_heads": 128, "mamba_d_head": 64,
              "mamba_d_state": 128, "mamba_n_groups": 1, "mamba_d_conv": 4, "mamba_expand": 2,
              "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, model_id="granite-h-like")
    assert indices(spec, FULL) == [5, 15, 25, 35] and kinds(spec) == {MAMBA: 36, FULL: 4}
    mixer = spec.layers[0].mamba
    assert (mixer.mixer, mixer.num_heads, mixer.head_dim, mixer.state_size, mixer.n_groups,
            mixer.intermediate_size) == ("mamba2", 128, 64, 128, 1, 8192)
    auto = spec_from_config(dict(config, mamba_d_head="auto"), model_id="granite-auto")
    assert auto.layers[0].mamba.head_dim == 2 * 4096 // 128


def test_unknown_model_type_with_standard_fields_is_described_and_noted():
    config = dict(LLAMA, model_type="my_llama_clone", architectures=["MyLlamaCloneForCausalLM"])
    spec = spec_from_config(config, model_id="clone")
    assert kinds(spec) == {FULL: 32} and spec.num_kv_heads == 8
    assert any("no family rules" in note for note in spec.notes)


@pytest.mark.parametrize("config, message", [
    (dict(LLAMA, max_position_embeddings="long"), "must be a positive number"),
    ({**json.loads((CONFIGS / "nvidia__Llama-3_3-Nemotron-Super-49B-v1.json").read_text()),
      "block_configs": ["attention"] * 80}, "block_configs"),
    (dict(LLAMA, rope_scaling={"rope_type": "yarn", "factor": "big"}), "cannot read the config"),
])
def test_odd_field_shapes_are_input_errors(config, message):
    with pytest.raises(InputError) as caught:
        spec_from_config(config, model_id="odd", config_path="odd.json")
    assert message in caught.value.message and "\n" not in caught.value.message


_HF_BLOCK_TO_KIND = {"linear_attention": MAMBA, "mamba": MAMBA, "full_attention": FULL, "attention": FULL,
                     "mlp": NONE, "moe": NONE}


@pytest.mark.parametrize("name", ["nvidia__Nemotron-H-56B-Base-8K.json",
                                  "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json"])
def test_nemotron_h_kinds_match_transformers_layers_block_type(name):
    from transformers import CONFIG_MAPPING

    blocks = CONFIG_MAPPING["nemotron_h"](**raw(name)).layers_block_type
    assert [layer.kind for layer in load(name).layers] == [_HF_BLOCK_TO_KIND[b] for b in blocks]


def test_qwen35_and_jamba_kinds_match_transformers():
    from transformers import CONFIG_MAPPING

    text = raw("Qwen__Qwen3.5-35B-A3B.json")["text_config"]
    expected = [_HF_TO_KIND[t] for t in CONFIG_MAPPING["qwen3_5_moe_text"](**text).layer_types]
    assert [layer.kind for layer in load("Qwen__Qwen3.5-35B-A3B.json").layers] == expected
    # Jamba from its class defaults only (period 8, offset 4): built here, no real config available
    jamba = CONFIG_MAPPING["jamba"](num_hidden_layers=16)
    config = {"model_type": "jamba", "architectures": ["JambaForCausalLM"], "num_hidden_layers": 16,
              "hidden_size": jamba.hidden_size, "torch_dtype": "bfloat16"}
    spec = spec_from_config(config, model_id="jamba-defaults")
    assert [layer.kind for layer in spec.layers] == [_HF_BLOCK_TO_KIND[b] for b in jamba.layers_block_type]


@pytest.mark.parametrize("model_type, layers", [("gemma3_text", 12), ("cohere2", 8), ("qwen3_next", 8)])
def test_post_init_pattern_defaults_match_transformers(model_type, layers):
    # configs that omit sliding_window_pattern / full_attention_interval: our defaults vs transformers'
    config = {"model_type": model_type, "num_hidden_layers": layers, "hidden_size": 512, "num_attention_heads": 8,
              "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000, "torch_dtype": "bfloat16"}
    if model_type == "qwen3_next":
        config.update(linear_conv_kernel_dim=4, linear_num_key_heads=2, linear_num_value_heads=4,
                      linear_key_head_dim=16, linear_value_head_dim=16)
    expected = [_HF_TO_KIND[t] for t in _transformers_layer_types(model_type, dict(config))]
    assert [layer.kind for layer in spec_from_config(config, model_id=model_type).layers] == expected


_SPEC_FIELDS = ("num_layers", "num_kv_heads", "head_size", "dtype", "max_model_len", "vocab_size", "hidden_size",
                "tie_word_embeddings", "num_experts", "num_experts_per_token", "is_mla", "model_type")


@pytest.mark.parametrize("name", [
    "meta-llama__Llama-3.1-8B.json", "google__gemma-2-9b-it.json", "google__gemma-3-4b-it.json",
    "openai__gpt-oss-20b.json", "Qwen__Qwen3-Next-80B-A3B-Thinking.json", "deepseek-ai__DeepSeek-V3.json",
    "nvidia__Nemotron-H-56B-Base-8K.json", "Qwen__Qwen2.5-7B.json", "Qwen__Qwen3.5-35B-A3B.json",
    "openai-community__gpt2-large.json", "mistralai__Mixtral-8x7B-v0.1.json", "Qwen__Qwen3-VL-8B-Instruct.json",
])
def test_transformers5_resaved_config_describes_the_same_model(name):
    # Second method: load the real file with transformers' own class and save it back (`to_dict`, as a
    # transformers-5 `save_pretrained` writes it: `dtype`, `rope_parameters`, filled layer_types, defaults);
    # the description must not change.
    from transformers import CONFIG_MAPPING

    config = raw(name)
    resaved = CONFIG_MAPPING[config["model_type"]].from_dict(config).to_dict()
    original, again = load(name), spec_from_config(resaved, model_id="resaved")
    assert [getattr(again, f) for f in _SPEC_FIELDS] == [getattr(original, f) for f in _SPEC_FIELDS]
    assert [_effective(layer) for layer in again.layers] == [_effective(layer) for layer in original.layers]


def _effective(layer):
    """A layer with its SSM dtype as vLLM >= 0.24 reads it (the resaved file writes the class default out)."""
    if layer.mamba is None:
        return layer
    mixer = layer.mamba
    dtype = mixer.ssm_state_dtype or mixer.ssm_state_dtype_class_default
    return dataclasses.replace(layer, mamba=dataclasses.replace(
        mixer, ssm_state_dtype=dtype, ssm_state_dtype_from=None, ssm_state_dtype_class_default=None))
