"""Weights without memory: safetensors headers and meta builds vs real loads, vLLM's logged figures,
per-rank / per-stage shares vs the profile's own shard builds, quantized layers counted by hand."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kvadvise.errors import InputError
from kvadvise.estimate.quantization import QuantScheme, linear_bytes, parse_quantization
from kvadvise.estimate.weights import (ShardPlan, estimate_weights, read_safetensors_header,
                                       records_from_safetensors)
from kvadvise.model.spec import load_model_spec
from kvadvise.profile.build import ShardShape, build_model, tensor_bytes
from tests.tiny_models import safetensors_tensor_bytes, save_tiny_checkpoint, tiny_config, tiny_spec

CONFIGS = Path(__file__).parent / "data" / "configs"
GIB = 1 << 30
TINY = ("llama", "qwen2", "gemma3", "deepseek_v2", "mixtral")


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


# ------------------------------------------------------------------ tiny models: to the byte ---------------

@pytest.mark.parametrize("name", TINY)
def test_headers_and_meta_build_equal_the_loaded_model(name, tmp_path):
    """The CPU profile's weights (a real load: parameters + buffers) = our profile-equivalent figure, from the
    safetensors headers and from the meta build alike."""
    directory, config = save_tiny_checkpoint(name, tmp_path / name)
    spec = load_model_spec(str(directory))
    loaded = build_model(spec, load_format="auto", model_path=str(directory), dtype="auto", device="cpu")
    measured = tensor_bytes(loaded)
    saved = json.loads((directory / "config.json").read_text())
    from_headers = estimate_weights(saved, model_dtype=spec.dtype, checkpoint_dir=directory)
    from_meta = estimate_weights(saved, model_dtype=spec.dtype)
    assert from_headers.source == "safetensors headers" and from_meta.source == "meta-device build"
    assert from_headers.profile_equivalent_bytes == measured
    assert from_meta.profile_equivalent_bytes == measured
    # the checkpoint is everything but the transformers-only rotary buffers, once every floating tensor is
    # held in the model dtype as vLLM holds it (transformers >= 5 saves DeepSeek's router gate in float32)
    at_model_dtype = safetensors_tensor_bytes(directory, float_bytes=2)
    assert sum(at_model_dtype.values()) == measured - from_meta.hf_buffer_bytes


def test_tiny_llama_by_hand(tmp_path):
    # tiny Llama (Llama-3.2-1B shrunk, see tests/tiny_models.py), counted by hand: embedding 512 x 64 x 2 B =
    # 65,536 (tied: lm_head is the same tensor); per layer q 64x64 + k 64x32 + v 64x32 + o 64x64 + MLP
    # 3 x 64x128 + 2 norms x 64 = 36,992 params = 73,984 B, x 2 = 147,968; final norm 128 B -> 213,632 B.
    weights = estimate_weights(tiny_config("llama"), model_dtype="bfloat16")
    assert weights.parameter_bytes == 213_632
    assert weights.hf_buffer_bytes == 2 * 8 * 4          # inv_freq + original_inv_freq, 8 float32 each
    # vLLM holds instead one cos/sin cache: max_position_embeddings 131072 x head_dim 16 x 2 B
    assert weights.vllm_extra_detail == {"rotary cos/sin cache": 131072 * 16 * 2}
    assert weights.vllm_buffers.method == "computed"
    # the HF tensors the profile measures (inv_freq included: < 1 KiB, counting it only lowers "fit") + vLLM's cache
    assert weights.profile_equivalent_bytes == 213_632 + 64
    assert weights.weights_bytes == 213_632 + 64 + 131072 * 16 * 2


@pytest.mark.parametrize("name", ("llama", "qwen2", "deepseek_v2", "mixtral"))
@pytest.mark.parametrize("tp", (2, 4))
def test_tp_rank_by_name_rules_equals_the_profile_shard_build(name, tp):
    """Our name rules on the whole model give the bytes of the profile's shape-equivalent rank build
    (kvadvise.profile.build: heads, kv heads, intermediate and vocabulary divided by T)."""
    config = tiny_config(name, layers=4)
    spec = tiny_spec(config)
    shard = build_model(spec, load_format="dummy", dtype="bfloat16", device="meta",
                        shape=ShardShape(tensor_parallel_size=tp))
    ours = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=tp))
    assert ours.profile_equivalent_bytes == tensor_bytes(shard)


def test_nemotron_h_tp_rank_splits_the_mamba2_groups():
    """A Nemotron-H rank holds n_groups / T of the B/C groups (vLLM mamba_mixer2 shards them when T divides
    n_groups): tiny model, mixer 4 heads x 8 = intermediate 32, 2 groups of state 16, TP 2."""
    config = tiny_config("nemotron_h", layers=3)
    spec = tiny_spec(config)
    shard = build_model(spec, load_format="dummy", dtype="bfloat16", device="meta",
                        shape=ShardShape(tensor_parallel_size=2))
    params = dict(shard.named_parameters())
    intermediate, groups, state, heads = 4 * 8, 2, 16, 4
    # in_proj rows: z and x (2 x intermediate), B and C (2 x groups x state), dt (one per head), halved
    assert params["model.layers.0.mixer.in_proj.weight"].shape[0] == (2 * intermediate + 2 * groups * state
                                                                      + heads) // 2 == 66
    # conv1d channels: x, B, C = intermediate + 2 x groups x state, halved
    assert params["model.layers.0.mixer.conv1d.weight"].shape[0] == (intermediate + 2 * groups * state) // 2 == 48
    # and the name rules on the whole model agree with the shard build
    ours = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=2))
    assert ours.profile_equivalent_bytes == tensor_bytes(shard)


def test_nemotron_h_56b_tp2_is_half_of_tp1_plus_the_replicated_tensors():
    """Nemotron-H-56B at TP 2 (n_groups 8: groups split): every tensor halves but the replicated ones, counted
    here from the config alone: the per-layer pre-norms (hidden each), the final norm, the attention
    layers' k/v stay split (8 kv heads / 2), the mixer's gated-norm is split with the heads."""
    config = _config("nvidia__Nemotron-H-56B-Base-8K.json")
    spec = load_model_spec(str(CONFIGS / "nvidia__Nemotron-H-56B-Base-8K.json"))
    whole = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(), model=None)
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    # replicated on every rank: one pre-norm of `hidden` per layer and the final norm (bf16)
    replicated = (layers + 1) * hidden * 2
    # the independent TP 1 count: embedding + lm_head, Mamba2 mixers, attention, MLP, norms
    inter = config["mamba_num_heads"] * config["mamba_head_dim"]
    groups, state, heads, kernel = config["n_groups"], config["ssm_state_size"], config["mamba_num_heads"], \
        config["conv_kernel"]
    conv = inter + 2 * groups * state
    mamba = (2 * inter + 2 * groups * state + heads) * hidden + conv * kernel + conv + 3 * heads + inter \
        + hidden * inter
    head_dim = config["attention_head_dim"]
    attention = hidden * head_dim * (config["num_attention_heads"] * 2 + config["num_key_value_heads"] * 2)
    mlp = 2 * hidden * config["intermediate_size"]
    pattern = config["hybrid_override_pattern"]
    params = 2 * config["vocab_size"] * hidden + pattern.count("M") * mamba + pattern.count("*") * attention \
        + pattern.count("-") * mlp + (layers + 1) * hidden
    assert params == 56_324_350_464                      # the reviewer's independent count
    assert whole.parameter_bytes == params * 2
    shard = build_model(spec, load_format="dummy", dtype="bfloat16", device="meta",
                        shape=ShardShape(tensor_parallel_size=2))
    # the estimate's path: weights of the rank's shard build (kvadvise.estimate.engine)
    rank = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=2), model=shard,
                            model_is_shard=True)
    assert rank.parameter_bytes == (params * 2 - replicated) // 2 + replicated == 56_325_325_312, rank.parameter_bytes


def test_kv_heads_replicate_when_fewer_than_ranks():
    # tiny qwen2 (hidden 64, intermediate 128, 4 heads / 2 kv heads of 16, vocabulary 512, untied, q/k/v
    # bias, 2 layers), per rank by hand. TP 2: q 2 heads 32x64 + 32; k, v one head each 16x64 + 16;
    # o 64x32; MLP 3 x 64x64; 2 norms x 64 -> 18,624 params a layer; embedding and lm_head 256 x 64 each.
    # TP 4: q one head 16x64 + 16; k, v still one head each (vLLM replicates kv heads when TP > kv heads);
    # o 64x16; MLP 3 x 32x64; norms 128 -> 10,416 a layer; embedding and lm_head 128 x 64 each.
    config = tiny_config("qwen2")
    two = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=2))
    four = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=4))
    assert two.parameter_bytes == (2 * 18_624 + 2 * 256 * 64 + 64) * 2
    assert four.parameter_bytes == (2 * 10_416 + 2 * 128 * 64 + 64) * 2


@pytest.mark.parametrize("partition, stage", [((2, 2), 0), ((2, 2), 1), ((1, 3), 1), ((3, 1), 0)])
def test_pp_stage_equals_the_profile_stage_build(partition, stage):
    config = tiny_config("llama", layers=4)     # tied embeddings: the last stage holds its own lm_head
    spec = tiny_spec(config)
    shape = ShardShape(partition=partition, stage=stage)
    built = build_model(spec, load_format="dummy", dtype="bfloat16", device="meta", shape=shape)
    start, stop = shape.layer_range(4)
    ours = estimate_weights(config, model_dtype="bfloat16",
                            plan=ShardPlan(layer_start=start, layer_end=stop, first_stage=shape.is_first_stage,
                                           last_stage=shape.is_last_stage))
    lm_head_copy = ours.vllm_extra_detail.get("lm_head copy of tied embedding on the last stage", 0)
    assert (lm_head_copy > 0) == (not shape.is_first_stage and shape.is_last_stage)
    assert ours.profile_equivalent_bytes + lm_head_copy == tensor_bytes(built)


def test_stages_add_up_to_the_whole_model():
    config = tiny_config("qwen2", layers=4)     # untied: nothing is held twice but the rotary cache
    whole = estimate_weights(config, model_dtype="bfloat16")
    first = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(layer_end=1, last_stage=False))
    last = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(layer_start=1, first_stage=False))
    assert first.parameter_bytes + last.parameter_bytes == whole.parameter_bytes


# ------------------------------------------------------------------ against vLLM's logs ------------------

# "Model loading took X GiB" (vLLM prints 4 decimals of GiB; older logs 2): the public cases live in
# tests/data/activation_cases.json `weights_cases` (ids from ../shared/vllm-cases/cases.json, sources, and how
# each figure is obtained); docs/fidelity.md shows them. "rounding": our bytes print back as the logged
# figure; "2%": within 2% (issue 4's target), each residue named in the case's `how`.
WEIGHTS_CASES = json.loads((Path(__file__).parent / "data" / "activation_cases.json").read_text())["weights_cases"]


def case_weights(case: dict) -> int:
    """kvadvise's weights for a logged case: estimate_weights on the case's config and TP size."""
    config = dict(_config(case["config"]), **case.get("config_changes", {}))
    plan = ShardPlan(tensor_parallel_size=case["tensor_parallel_size"])
    return estimate_weights(config, model_dtype="bfloat16", plan=plan).weights_bytes


@pytest.mark.parametrize("case", WEIGHTS_CASES, ids=lambda c: c["id"])
def test_weights_of_public_logs(case):
    ours = case_weights(case)
    assert ours == case["kvadvise_weights_bytes"]          # the figure docs/fidelity.md shows
    logged = case["logged_gib"]
    if case["tolerance"] == "rounding":
        half = 0.5 * 10 ** -case["logged_decimals"]
        assert (logged - half) * GIB <= ours < (logged + half) * GIB, (case["id"], ours / GIB)
    else:
        assert abs(ours / GIB - logged) / logged < 0.02, (case["id"], ours / GIB)


@pytest.mark.parametrize("name", ("deepseek_v2", "deepseek_v3"))
def test_moe_router_held_in_the_model_dtype_as_vllm_holds_it(name):
    """transformers >= 5 keeps DeepSeek's router gate.weight in float32 (`_keep_in_fp32_modules_strict`);
    vLLM builds it in the model dtype (ReplicatedLinear / GateLinear) and keeps only the noaux_tc router bias
    in float32. Tiny models (hidden 64, 4 routed experts, layer 1 the only MoE layer), by hand."""
    config = tiny_config(name)
    spec = tiny_spec(config)
    model = build_model(spec, load_format="dummy", dtype="bfloat16", device="meta")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    gate = tensors["model.layers.1.mlp.gate.weight"]
    assert (tuple(gate.shape), str(gate.dtype)) == ((4, 64), "torch.bfloat16")      # 4 x 64 x 2 = 512 B
    bias = tensors.get("model.layers.1.mlp.gate.e_score_correction_bias")
    if name == "deepseek_v3":
        assert (tuple(bias.shape), str(bias.dtype)) == ((4,), "torch.float32")      # 4 x 4 = 16 B
    else:
        assert bias is None
    weights = estimate_weights(config, model_dtype="bfloat16")
    assert weights.profile_equivalent_bytes == tensor_bytes(model)
    dense = estimate_weights(dict(config, torch_dtype="bfloat16"), model_dtype="bfloat16",
                             plan=ShardPlan(layer_start=1, layer_end=2, first_stage=False, last_stage=False))
    per_layer = sum(t.numel() * t.element_size() for key, t in tensors.items() if key.startswith("model.layers.1."))
    assert dense.parameter_bytes == per_layer


def test_deepseek_r1_tp8_fp8_against_the_hpu_fork_log():
    # HabanaAI/vllm-fork#809 (vLLM's Gaudi fork, DeepSeek-R1 over 8 HPUs): "Pre-loading model weights on hpu:0
    # took 79.41 GiB". Block-fp8 weights with float32 scale_inv blocks, bf16 embedding / lm_head / norms /
    # routers, per rank. Ours: 79.29 GiB of parameters + 0.02 GiB rotary cache + 0.24 GiB of MLA W_UK/W_UV
    # that vLLM's CUDA MLA backends dequantize from kv_b_proj (the HPU fork need not): 79.55 GiB, 0.2 % above.
    weights = estimate_weights(_config("deepseek-ai__DeepSeek-R1.json"), model_dtype="bfloat16",
                               plan=ShardPlan(tensor_parallel_size=8))
    assert weights.quantization == "fp8_block"
    assert abs(weights.weights_bytes / GIB - 79.41) / 79.41 < 0.02
    assert abs(weights.parameter_bytes / GIB - 79.41) / 79.41 < 0.005
    # the MTP layer (index 61 = num_hidden_layers) is not built, as vLLM does not load it without speculation
    assert "MLA W_UK/W_UV dequantized from kv_b_proj" in weights.vllm_extra_detail


def test_llama_31_8b_exact_to_the_log_rounding():
    weights = estimate_weights(_config("meta-llama__Llama-3.1-8B.json"), model_dtype="bfloat16")
    # parameters + transformers' inv_freq and original_inv_freq (64 float32 each) + vLLM's rotary cache
    assert weights.weights_bytes == 16_060_522_496 + 2 * 64 * 4 + 131072 * 128 * 2
    # "14.9888" printed with 4 decimals: [14.98875, 14.98885) GiB
    assert 14.98875 * GIB <= weights.weights_bytes < 14.98885 * GIB


def test_llama_3_8b_tp2_log():
    # case11: Meta-Llama-3-8B -tp 2 logged "model weights take 7.48GiB". Llama-3-8B has Llama-3.1-8B's
    # architecture with max_position_embeddings 8192 and no rope scaling (its rotary cache is 8192 x 128 x 2 B).
    config = dict(_config("meta-llama__Llama-3.1-8B.json"), max_position_embeddings=8192, rope_scaling=None)
    weights = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=2))
    assert 7.475 * GIB <= weights.weights_bytes < 7.485 * GIB
    assert weights.vllm_extra_detail == {"rotary cos/sin cache": 8192 * 128 * 2}


def test_mxfp4_padding_by_hand():
    # gpt-oss-120b: 36 layers x 128 experts; hidden 2880 -> 3072, intermediate 2880 -> 2944 (Marlin)
    weights = estimate_weights(_config("openai__gpt-oss-120b.json"), model_dtype="bfloat16")
    experts = 36 * 128
    w13 = 2 * 2944 * 3072 // 2 + 2 * 2944 * 3072 // 32 + 2 * 2944 * 2   # uint8 blocks + scales + bf16 bias
    w2 = 3072 * 2944 // 2 + 3072 * 2944 // 32 + 3072 * 2
    unquantized = weights.parameter_bytes - experts * (w13 + w2)
    # everything else stays bf16: embedding + lm_head 2 x 201088 x 2880 x 2 B, attention, routers, norms
    per_layer = (2880 * (4096 + 512 + 512) + 4096 * 2880 + 4096 + 512 + 512 + 2880 + 64 + 128 * 2880 + 128
                 + 2 * 2880) * 2
    assert unquantized == 2 * 201088 * 2880 * 2 + 36 * per_layer + 2880 * 2


# ------------------------------------------------------------------ quantization by hand ------------------

def test_fp8_block_linear_by_hand():
    scheme = QuantScheme("fp8_block", 8, block=(128, 128))
    # Qwen3-30B-A3B-FP8 expert gate_up (one expert): 1536 x 2048 fp8 + ceil(1536/128) x ceil(2048/128) float32
    assert linear_bytes(scheme, 1536, 2048, 2) == 1536 * 2048 + 12 * 16 * 4
    # a TP shard that is not a block multiple keeps a partial block: out 200 -> 2 blocks
    assert linear_bytes(scheme, 200, 128, 2) == 200 * 128 + 2 * 1 * 4


def test_gptq_and_awq_linear_by_hand():
    gptq = QuantScheme("gptq", 4, group_size=128, desc_act=True)
    # Genz-70b (Llama-2-70B, GPTQ 4-bit g128) q_proj 8192 x 8192: qweight 8192 x 8192 / 2; fp16 scales
    # 64 groups x 8192 x 2; qzeros 64 x 8192 / 2; g_idx 8192 int32
    assert linear_bytes(gptq, 8192, 8192, 2) == 33_554_432 + 1_048_576 + 262_144 + 32_768
    awq = QuantScheme("awq", 4, group_size=128)
    assert linear_bytes(awq, 8192, 8192, 2) == 33_554_432 + 262_144 + 1_048_576


def test_compressed_tensors_w4a16_and_bnb_by_hand():
    scheme, _ = parse_quantization(_config("moonshotai__Kimi-K2.5.json"))
    assert scheme is not None and scheme.method == "ct_int" and scheme.bits == 4 and scheme.group_size == 32
    # weight_packed 7168 x 2048 / 2 + bf16 scales 7168 x 64 groups + weight_shape int64 x 2
    assert linear_bytes(scheme, 7168, 2048, 2) == 7168 * 2048 // 2 + 7168 * 64 * 2 + 16
    bnb = QuantScheme("bnb4", 4, group_size=64, double_quant=True)
    # 4096 x 4096: packed 8,388,608 B; 262,144 blocks -> uint8 absmax + 1,024 float32 second-level scales
    assert linear_bytes(bnb, 4096, 4096, 2) == 8_388_608 + 262_144 + 1024 * 4


def test_kimi_k25_ignores_attention_and_dense_mlp():
    from kvadvise.estimate.quantization import quantizes_linear

    scheme, _ = parse_quantization(_config("moonshotai__Kimi-K2.5.json"))
    assert not quantizes_linear("language_model.model.layers.3.self_attn.q_a_proj", scheme, is_expert=False)
    assert not quantizes_linear("language_model.model.layers.0.mlp.gate_proj", scheme, is_expert=False)
    assert not quantizes_linear("language_model.model.layers.3.mlp.shared_experts.up_proj", scheme, is_expert=False)
    assert quantizes_linear("language_model.model.layers.3.mlp.experts.gate_up_proj", scheme, is_expert=True)


def test_fp8_headers_equal_the_analytic_count(tmp_path):
    """A tiny block-fp8 checkpoint written by hand (fp8 weights + float32 weight_scale_inv, as DeepSeek and
    Qwen FP8 checkpoints store them): the header count and the meta build's analytic count agree."""
    import torch
    from safetensors.torch import save_file

    from kvadvise.estimate.meta import build_meta_model

    config = tiny_config("qwen2", hidden=256, intermediate=384, heads=4, kv_heads=2, head_dim=64)
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]}
    model = build_meta_model(config, "bfloat16")
    tensors = {}
    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    for name, parameter in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in linear and name.endswith(".weight") and "lm_head" not in name:
            out, inp = parameter.shape
            tensors[name] = torch.zeros(out, inp, dtype=torch.float8_e4m3fn)
            tensors[name + "_scale_inv"] = torch.ones(-(-out // 128), -(-inp // 128), dtype=torch.float32)
        else:
            tensors[name] = torch.zeros(parameter.shape, dtype=torch.bfloat16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    from_headers = estimate_weights(config, model_dtype="bfloat16", checkpoint_dir=tmp_path)
    analytic = estimate_weights(config, model_dtype="bfloat16")
    assert from_headers.source == "safetensors headers"
    assert from_headers.parameter_bytes == analytic.parameter_bytes
    assert from_headers.quantization_scale_bytes == analytic.quantization_scale_bytes > 0


# ------------------------------------------------------------------ headers only -------------------------

def test_header_is_read_without_tensor_data(tmp_path):
    header = json.dumps({"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
                         "__metadata__": {"format": "pt"}}).encode()
    path = tmp_path / "model.safetensors"
    # no tensor data at all after the header: only the header may be read
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert read_safetensors_header(path)["a"]["shape"] == [2, 3]
    records = records_from_safetensors(tmp_path)
    assert [(r.name, r.shape, r.element_bytes) for r in records] == [("a", (2, 3), 2)]


def test_malformed_headers_are_input_errors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(InputError):
        records_from_safetensors(tmp_path)
    header = json.dumps({"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 10]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(InputError, match="spans 10 bytes"):
        records_from_safetensors(tmp_path)


@pytest.mark.parametrize("tp", (1, 2))
def test_vocabulary_padding_one_source_for_profile_and_estimate(tp):
    """A vocabulary that is not a multiple of 64 (the tiny Llama with 500 tokens): vLLM holds 512 rows (tied:
    one tensor). Estimate (HF rows + padding) and the profile's build (TP 1: HF rows, padding computed; TP 2:
    vLLM's 256-row share built in) give the same weights, both from kvadvise/plan/vllm_buffers.py."""
    from kvadvise.profile.build import vllm_weight_buffers_of

    config = dict(tiny_config("llama"), vocab_size=500)
    weights = estimate_weights(config, model_dtype="bfloat16", plan=ShardPlan(tensor_parallel_size=tp))
    # TP 1: 12 rows x 64 x 2 B; TP 2: 256 - ceil(500 / 2) = 6 rows
    padding = (12 if tp == 1 else 6) * 64 * 2
    assert weights.vllm_extra_detail == {"rotary cos/sin cache": 131072 * 16 * 2,
                                         "vocabulary padding to a multiple of 64": padding}
    spec = tiny_spec(config)
    shape = ShardShape(tensor_parallel_size=tp)
    built = build_model(spec, load_format="dummy", dtype="bfloat16", device="meta", shape=shape)
    buffers = vllm_weight_buffers_of(built, spec, shape)
    assert buffers.vocab_padding_bytes == (padding if tp == 1 else 0)
    assert tensor_bytes(built) + buffers.total_bytes == weights.weights_bytes
