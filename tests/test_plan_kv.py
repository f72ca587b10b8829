"""KV-cache arithmetic (kvadvise.plan.kv) on hand-built ModelSpecs, against numbers worked out by hand.

Every expected value below is computed in the comment next to it from vLLM's formulas
(../shared/reference/vllm-accounting.md sections 4-6), not read back from the code under test.
"""

from __future__ import annotations

import math

import pytest

from kvadvise.errors import InputError
from kvadvise.model.spec import LayerKind, LayerSpec, MambaMixerSpec, ModelSpec
from kvadvise.plan.kv import (KvSettings, budget_for_model_len, capacity_from_blocks, kv_capacity, kv_layout,
                              largest_fitting_model_len, mamba_state_bytes, request_blocks, vllm_rules)

GIB = 1 << 30
MIB = 1 << 20
FULL, SLIDING, CHUNKED, MLA, MAMBA, NONE = (LayerKind.FULL, LayerKind.SLIDING, LayerKind.CHUNKED, LayerKind.MLA,
                                          LayerKind.MAMBA, LayerKind.NONE)


def make_spec(kinds, *, kv_heads=8, head_size=128, attention_heads=32, dtype="bfloat16", max_model_len=131072,
              window=None, chunk=None, mamba=None, per_layer_heads=None, model_type="llama"):
    """A ModelSpec by hand: `kinds` is a list of LayerKind, one per layer."""
    layers = []
    for index, kind in enumerate(kinds):
        heads = per_layer_heads[index] if per_layer_heads else kv_heads
        if kind == MLA:
            heads = 1
        layers.append(LayerSpec(
            index=index, kind=kind,
            num_kv_heads=heads if kind in (FULL, SLIDING, CHUNKED, MLA) else None,
            head_size=head_size if kind in (FULL, SLIDING, CHUNKED, MLA) else None,
            sliding_window=window if kind == SLIDING else None,
            attention_chunk_size=chunk if kind == CHUNKED else None,
            mamba=mamba if kind == MAMBA else None))
    return ModelSpec(model_id=f"hand/{model_type}", config_path="<hand>", model_type=model_type, architectures=(),
                     num_layers=len(layers), layers=tuple(layers), hidden_size=4096, intermediate_size=14336,
                     vocab_size=128256, num_attention_heads=attention_heads,
                     num_kv_heads=1 if MLA in kinds else kv_heads, head_size=head_size, dtype=dtype,
                     max_model_len=max_model_len, is_mla=MLA in kinds)


LLAMA_3_1_8B = make_spec([FULL] * 32)  # 32 layers, 8 kv heads, head 128, bf16, 131072


def gib_interval(printed: float) -> tuple[int, int]:
    """[low, high): the byte budgets vLLM prints as `printed` GiB (2 decimals, round half to even aside)."""
    return math.ceil((printed - 0.005) * GIB), math.ceil((printed + 0.005) * GIB)


# ---------------------------------------------------------------------------------------------- full attention

def test_llama_3_1_8b_page_and_bytes_per_token():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.11"))
    # page = 2 * 16 * 8 * 128 * 2 = 65,536 B; per token = 2 * 8 * 128 * 2 * 32 layers = 131,072 B
    assert layout.page_size_bytes == 65536
    assert layout.block_size == 16
    assert layout.group_size == 32
    assert layout.num_groups == 1
    assert layout.bytes_per_token == 131072
    assert layout.bytes_per_token_by_kind == {"full_attention": 131072}
    assert layout.kv_heads_per_rank == 8
    assert layout.blocks_per_request == 131072 // 16
    assert "0.11" in layout.rules


def test_worked_example_llama_3_1_8b_53_29_gib_under_0_11():
    """Done-when: 53.29 GiB -> 27,284 blocks, 436,544 tokens, 3.33x at 131,072 (0.11 rules)."""
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.11", max_model_len=131072))
    low, high = gib_interval(53.29)
    # one block id costs 65,536 * 32 = 2 MiB: [53.285, 53.295) GiB / 2 MiB = [27281.9.., 27287.0..)
    low_blocks = kv_capacity(layout, low).num_blocks
    high_blocks = kv_capacity(layout, high - 1).num_blocks
    assert (low_blocks, high_blocks) == (27281, 27287)
    assert low_blocks <= 27284 <= high_blocks
    capacity = kv_capacity(layout, int(53.29 * GIB))
    assert capacity.num_blocks == 27284
    assert capacity.tokens == 436544            # 27,284 * 16
    assert f"{capacity.max_concurrency:.2f}" == "3.33"  # 27,284 / 8,192
    assert capacity.fits_one_request and capacity.largest_fitting_model_len is None
    # the budget that buys exactly 27,284 blocks lies inside the printed interval
    assert low <= 27284 * 2 * MIB < high


def test_0_33_tokens_are_concurrency_times_model_len():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.33", max_model_len=20000))
    capacity = kv_capacity(layout, 4 * GIB)
    # 4 GiB / 2 MiB = 2048 blocks; per request cdiv(20000, 16) = 1250; 2048 / 1250 = 1.6384
    assert capacity.num_blocks == 2048
    assert capacity.max_concurrency == pytest.approx(1.6384)
    assert capacity.tokens == 32768              # int(1.6384 * 20000) = 32768
    old = kv_capacity(kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.11", max_model_len=20000)), 4 * GIB)
    assert old.tokens == 2048 * 16               # same for a one-group model: 32,768
    assert vllm_rules("0.33").tokens_from_concurrency and not vllm_rules("0.12").tokens_from_concurrency


def test_default_version_is_newest():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings())
    assert layout.vllm_version == "0.33"
    assert "0.33" in layout.rules


def test_llama_2_7b_mha_56_18_gib_gives_7191_blocks():
    spec = make_spec([FULL] * 32, kv_heads=32, max_model_len=4096)
    layout = kv_layout(spec, KvSettings(vllm_version="0.11"))
    assert layout.page_size_bytes == 262144      # 2 * 16 * 32 * 128 * 2
    low, high = gib_interval(56.18)
    # one block id = 262,144 * 32 = 8 MiB: [56.175, 56.185) GiB / 8 MiB = [7190.4, 7191.68)
    assert kv_capacity(layout, low).num_blocks == 7190
    assert kv_capacity(layout, high - 1).num_blocks == 7191


@pytest.mark.parametrize("tp, heads_per_rank, page", [(1, 8, 65536), (2, 4, 32768), (8, 1, 8192),
                                                      (16, 1, 8192), (32, 1, 8192)])
def test_kv_heads_per_rank_replicate_below_one(tp, heads_per_rank, page):
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(tensor_parallel_size=tp))
    # max(1, 8 // tp) heads; page = 2 * 16 * heads * 128 * 2
    assert layout.kv_heads_per_rank == heads_per_rank
    assert layout.page_size_bytes == page


@pytest.mark.parametrize("tp", [3, 5, 0, -1])
def test_tp_that_does_not_divide_heads_is_an_input_error(tp):
    with pytest.raises(InputError):
        kv_layout(LLAMA_3_1_8B, KvSettings(tensor_parallel_size=tp))


def test_tp_that_neither_divides_nor_multiplies_kv_heads_is_an_input_error():
    spec = make_spec([FULL] * 4, kv_heads=12, attention_heads=48)   # TP 8 divides 48 heads, not 12 kv heads
    with pytest.raises(InputError):
        kv_layout(spec, KvSettings(tensor_parallel_size=8))


@pytest.mark.parametrize("kv_dtype, page, resolved", [("auto", 65536, "bfloat16"), ("bfloat16", 65536, "bfloat16"),
                                                      ("float16", 65536, "float16"), ("fp8", 32768, "fp8"),
                                                      ("fp8_e4m3", 32768, "fp8_e4m3"),
                                                      ("fp8_e5m2", 32768, "fp8_e5m2")])
def test_kv_cache_dtypes(kv_dtype, page, resolved):
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(kv_cache_dtype=kv_dtype))
    assert layout.page_size_bytes == page
    assert layout.kv_cache_dtype == resolved


def test_auto_follows_a_float32_model_dtype():
    layout = kv_layout(make_spec([FULL] * 2, dtype="float32"), KvSettings())
    assert layout.page_size_bytes == 2 * 16 * 8 * 128 * 4


@pytest.mark.parametrize("bad", ["int8", "fp4", "", "bf16x", "fp8_ds_mla_typo"])
def test_unknown_kv_cache_dtype_is_an_input_error(bad):
    with pytest.raises(InputError):
        kv_layout(LLAMA_3_1_8B, KvSettings(kv_cache_dtype=bad))


def test_unknown_vllm_version_is_an_input_error():
    with pytest.raises(InputError):
        kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.9"))


@pytest.mark.parametrize("field, value", [("block_size", 0), ("max_model_len", -5), ("max_num_batched_tokens", 0)])
def test_non_positive_settings_are_input_errors(field, value):
    with pytest.raises(InputError):
        kv_layout(LLAMA_3_1_8B, KvSettings(**{field: value}))


def test_block_size_override():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(block_size=32, vllm_version="0.11"))
    assert layout.page_size_bytes == 131072     # 2 * 32 * 8 * 128 * 2
    capacity = kv_capacity(layout, 8 * GIB)
    # 8 GiB / (131,072 * 32) = 2048 blocks of 32 tokens = 65,536 tokens; per request 131072 / 32 = 4096
    assert (capacity.num_blocks, capacity.tokens) == (2048, 65536)
    assert capacity.max_concurrency == pytest.approx(0.5)


def test_model_len_that_does_not_fit_gives_the_largest_that_does():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.11"))
    capacity = kv_capacity(layout, GIB + 5 * MIB)
    # (1 GiB + 5 MiB) / 2 MiB = 514 blocks -> 514 * 16 = 8,224 tokens is the longest request
    assert capacity.num_blocks == 514
    assert not capacity.fits_one_request
    assert capacity.largest_fitting_model_len == 8224
    assert capacity.max_concurrency == pytest.approx(514 / 8192)
    assert largest_fitting_model_len(layout, 0) == 0
    assert budget_for_model_len(layout) == 8192 * 2 * MIB  # 16 GiB for one 131,072-token request


def test_negative_budget_buys_zero_blocks():
    """vLLM clamps num_blocks at 0 (case18: -1.05 GiB -> '# cuda blocks: 0', 'Maximum concurrency ... 0.00x')."""
    layout = kv_layout(make_spec([FULL] * 28, kv_heads=4, attention_heads=28, max_model_len=4096),
                       KvSettings(vllm_version="0.11"))
    capacity = kv_capacity(layout, int(-1.05 * GIB))
    assert capacity.num_blocks == 0 and capacity.tokens == 0
    assert f"{capacity.max_concurrency:.2f}" == "0.00"
    assert capacity.largest_fitting_model_len == 0


def test_missing_max_model_len_is_an_input_error():
    with pytest.raises(InputError):
        kv_layout(make_spec([FULL] * 2, max_model_len=None), KvSettings())


def test_pipeline_stage_uses_its_own_layers():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.11"), layers=range(0, 16))
    # 16 layers on the stage: 4 GiB / (65,536 * 16) = 4096 blocks
    assert layout.group_size == 16
    assert kv_capacity(layout, 4 * GIB).num_blocks == 4096
    assert layout.bytes_per_token == 16 * 4096
    with pytest.raises(InputError):
        kv_layout(LLAMA_3_1_8B, KvSettings(), layers=[40])


def test_capacity_from_blocks_matches_kv_capacity():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(vllm_version="0.11"))
    assert capacity_from_blocks(layout, 27284).tokens == kv_capacity(layout, int(53.29 * GIB)).tokens


# ---------------------------------------------------------------------------------------------- MLA

def deepseek_like(**kw):
    return make_spec([MLA] * 61, head_size=576, attention_heads=128, max_model_len=163840, model_type="deepseek_v3",
                     **kw)


def test_mla_page_block_64_and_never_split():
    for tp in (1, 8, 16):
        layout = kv_layout(deepseek_like(), KvSettings(tensor_parallel_size=tp))
        # 64 * 576 * 2 = 73,728 B (no factor 2 for K and V; one latent whatever the TP)
        assert layout.block_size == 64
        assert layout.page_size_bytes == 73728
        assert layout.kv_heads_per_rank == 1
        assert layout.bytes_per_token_by_kind == {"mla": 61 * 576 * 2}
    assert any("FlashMLA" in note for note in layout.assumptions)


def test_mla_block_override_and_fp8():
    assert kv_layout(deepseek_like(), KvSettings(block_size=16)).page_size_bytes == 16 * 576 * 2
    assert kv_layout(deepseek_like(), KvSettings(block_size=128, kv_cache_dtype="fp8")).page_size_bytes == 128 * 576


def test_mla_concurrency_case07():
    """DeepSeek-R1 TP8 (case07): 5266 blocks of 64 at 163,840 tokens -> 5266 / 2560 = 2.06x."""
    layout = kv_layout(deepseek_like(), KvSettings(tensor_parallel_size=8, vllm_version="0.11"))
    budget = 5266 * 73728 * 61
    capacity = kv_capacity(layout, budget)
    assert capacity.num_blocks == 5266
    assert f"{capacity.max_concurrency:.2f}" == "2.06"
    assert kv_capacity(layout, budget - 1).num_blocks == 5265


# ---------------------------------------------------------------------------------------------- sliding / chunked

GPT_OSS_120B = make_spec([SLIDING, FULL] * 18, kv_heads=8, head_size=64, attention_heads=64, window=128,
                         model_type="gpt_oss")


def test_sliding_window_grouping_and_concurrency():
    settings = KvSettings(vllm_version="0.11", max_num_batched_tokens=8192)
    layout = kv_layout(GPT_OSS_120B, settings)
    # page = 2 * 16 * 8 * 64 * 2 = 32,768; 18 sliding + 18 full -> group_size 18, 2 groups
    assert layout.page_size_bytes == 32768
    assert (layout.group_size, layout.num_groups) == (18, 2)
    by_kind = {g.kind: g for g in layout.groups}
    assert by_kind[FULL].blocks_per_request == 8192                     # cdiv(131072, 16)
    assert by_kind[SLIDING].blocks_per_request == 521                   # cdiv(min(127 + 8192, 131072), 16) + 1
    assert by_kind[SLIDING].layer_indices == tuple(range(0, 36, 2))
    capacity = kv_capacity(layout, 10 * GIB)
    # 10 GiB / 32,768 / 18 = 18,204.4 -> 18,204 blocks; tokens 18,204 // 2 * 16 = 145,632
    assert capacity.num_blocks == 18204
    assert capacity.tokens == 145632
    assert capacity.max_concurrency == pytest.approx(18204 / 8713)
    new = kv_capacity(kv_layout(GPT_OSS_120B, KvSettings(vllm_version="0.33", max_num_batched_tokens=8192)), 10 * GIB)
    assert new.tokens == int(18204 / 8713 * 131072)  # 273,847: 0.33 counts the window's saving
    assert layout.bytes_per_token_by_kind == {"sliding_window": 18 * 2048, "full_attention": 18 * 2048}


def test_sliding_window_default_batched_tokens_is_noted():
    layout = kv_layout(GPT_OSS_120B, KvSettings())
    assert layout.max_num_batched_tokens == 8192
    assert any("max-num-batched-tokens" in note for note in layout.assumptions)
    assert not kv_layout(GPT_OSS_120B, KvSettings(max_num_batched_tokens=2048)).assumptions
    # the warning names vllm serve's tiers of that rule set: 0.33 (vLLM 0.28+ get_batch_defaults) has a
    # 16384-token tier for >= 160 GiB cards; 0.11 only 8192 (>= 70 GiB, not A100) and 2048
    newest = next(note for note in layout.assumptions if "max-num-batched-tokens" in note)
    assert "other than A100 is 8192, 16384 on >= 160 GiB GPUs" in newest and "2048 on others" in newest
    older = next(note for note in kv_layout(GPT_OSS_120B, KvSettings(vllm_version="0.11")).assumptions
                 if "max-num-batched-tokens" in note)
    assert "other than A100 is 8192, 2048 on others" in older and "16384" not in older
    small = kv_layout(GPT_OSS_120B, KvSettings(max_num_batched_tokens=1024))
    # cdiv(min(127 + 1024, 131072), 16) + 1 = 72 + 1 = 73
    assert {g.kind: g.blocks_per_request for g in small.groups}[SLIDING] == 73


def test_sliding_window_capped_by_model_len():
    layout = kv_layout(GPT_OSS_120B, KvSettings(max_model_len=100, max_num_batched_tokens=8192))
    # min(127 + 8192, 100) = 100 -> cdiv(100, 16) + 1 = 8; full cdiv(100, 16) = 7
    assert {g.kind: g.blocks_per_request for g in layout.groups} == {SLIDING: 8, FULL: 7}
    assert request_blocks(layout, 100) == 15


def test_gemma3_27b_like_five_to_one_grouping():
    kinds = [FULL if i % 6 == 5 else SLIDING for i in range(62)]   # 10 full, 52 sliding (window 1024)
    spec = make_spec(kinds, kv_heads=16, head_size=128, window=1024, model_type="gemma3_text")
    layout = kv_layout(spec, KvSettings(vllm_version="0.11", max_num_batched_tokens=8192))
    # group_size = min(10, 52) = 10; sliding: cdiv(52, 10) = 6 groups (9,9,9,9,8,8 layers), full: 1 group
    assert layout.group_size == 10
    assert layout.num_groups == 7
    assert sorted(len(g.layer_indices) for g in layout.groups) == [8, 8, 9, 9, 9, 9, 10]
    assert layout.page_size_bytes == 131072         # 2 * 16 * 16 * 128 * 2
    # sliding per request: cdiv(min(1023 + 8192, 131072), 16) + 1 = 577, six groups; full 8192
    assert layout.blocks_per_request == 6 * 577 + 8192
    assert any("padding layers" in note for note in layout.notes)
    capacity = kv_capacity(layout, 20 * GIB)
    # 20 GiB / 131,072 / 10 = 16,384 blocks; 0.11 tokens = 16,384 // 7 * 16 = 37,440
    assert capacity.num_blocks == 16384
    assert capacity.tokens == 37440


def test_group_size_rule_changes_in_0_12():
    kinds = [SLIDING] * 12 + [FULL] * 13          # gpt-oss-20b + an eagle drafter: 12 sw + 13 full
    spec = make_spec(kinds, kv_heads=8, head_size=64, attention_heads=64, window=128)
    old = kv_layout(spec, KvSettings(vllm_version="0.11"))
    new = kv_layout(spec, KvSettings(vllm_version="0.12"))
    # 0.11: group_size 12 -> sliding 1 group, full cdiv(13, 12) = 2 groups (7 + 6 layers): 3 groups
    assert (old.group_size, old.num_groups) == (12, 3)
    # 0.12: 13 < 1.25 * 12 = 15 -> group_size 13 -> one group per type
    assert (new.group_size, new.num_groups) == (13, 2)
    # gpt-oss-20b + a 4-layer drafter: 12 sw + 17 full; 17 >= 15 but < 1.5 * 12 = 18
    drafter = make_spec([SLIDING] * 12 + [FULL] * 17, kv_heads=8, head_size=64, attention_heads=64, window=128)
    # 0.12: group_size 12 -> 1 sliding + cdiv(17, 12) = 2 full groups; 0.33: group_size 17 -> 2 groups
    assert kv_layout(drafter, KvSettings(vllm_version="0.12")).num_groups == 3
    assert kv_layout(drafter, KvSettings(vllm_version="0.33")).group_size == 17
    assert kv_layout(drafter, KvSettings(vllm_version="0.33")).num_groups == 2


def test_chunked_local_attention_llama4_like():
    kinds = [FULL if i % 4 == 3 else CHUNKED for i in range(48)]
    spec = make_spec(kinds, kv_heads=8, head_size=128, attention_heads=40, chunk=8192, max_model_len=1048576)
    layout = kv_layout(spec, KvSettings(vllm_version="0.11", max_num_batched_tokens=8192))
    # 12 full + 36 chunked: group_size 12, 3 chunked groups + 1 full
    assert (layout.group_size, layout.num_groups) == (12, 4)
    per_kind = sorted((g.kind.value, g.blocks_per_request) for g in layout.groups)
    # chunked: cdiv(min(8192 + 8192, 1048576), 16) = 1024; full: 1048576 / 16 = 65536
    assert per_kind == [("chunked_local_attention", 1024)] * 3 + [("full_attention", 65536)]


def test_different_page_sizes_one_type_uniform_type_group():
    heads = [8, 8, 4, 8]                           # e.g. a NAS model with a slimmer layer
    spec = make_spec([FULL] * 4, per_layer_heads=heads)
    layout = kv_layout(spec, KvSettings(vllm_version="0.11"))
    # one group; page = sum of pages = 16 * 2 * 128 * 2 * (8 + 8 + 4 + 8) = 229,376
    assert layout.group_size == 1 and layout.num_groups == 1
    assert layout.page_size_bytes == 229376
    assert kv_capacity(layout, 229376 * 100 + 5).num_blocks == 100
    with pytest.raises(InputError):
        kv_layout(spec, KvSettings(vllm_version="0.10.2"))


def test_no_kv_layers_are_skipped():
    spec = make_spec([FULL, NONE, FULL, NONE])
    layout = kv_layout(spec, KvSettings(vllm_version="0.11"))
    assert layout.group_size == 2 and layout.layer_indices == (0, 2)
    with pytest.raises(InputError):
        kv_layout(make_spec([NONE, NONE]), KvSettings())


# ---------------------------------------------------------------------------------------------- Mamba hybrids

GDN = MambaMixerSpec(mixer="gated_delta_net", conv_kernel=4, num_k_heads=16, num_v_heads=32, head_k_dim=128,
                     head_v_dim=128)
QWEN3_NEXT = make_spec([FULL if i % 4 == 3 else MAMBA for i in range(48)], kv_heads=2, head_size=256,
                       attention_heads=16, max_model_len=262144, mamba=GDN, model_type="qwen3_next")


def test_gated_delta_net_state_bytes():
    # TP2: conv (8192 / 2, 3) bf16 = 24,576 B; ssm (32 / 2, 128, 128) bf16 = 524,288 B
    assert mamba_state_bytes(GDN, 2, "bfloat16") == 24576 + 524288
    # TP1: conv 8192 * 3 * 2 = 49,152; ssm 32 * 128 * 128 * 2 = 1,048,576
    assert mamba_state_bytes(GDN, 1, "bfloat16") == 49152 + 1048576
    fp32_ssm = MambaMixerSpec(**{**GDN.__dict__, "ssm_state_dtype": "float32"})
    assert mamba_state_bytes(fp32_ssm, 2, "bfloat16") == 24576 + 1048576
    with pytest.raises(InputError):
        mamba_state_bytes(GDN, 3, "bfloat16")


def test_qwen3_next_case04_hybrid_under_0_10_2():
    """case04: TP2, 44.59 GiB -> 7162 blocks (block 544), 973,760 tokens, 14.77x at 262,144."""
    layout = kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, vllm_version="0.10.2"))
    # attention per token on a rank: 2 * 1 head * 256 * 2 = 1,024 B; Mamba page 548,864 B
    # block = 16 * cdiv(548864, 16 * 1024) = 16 * 34 = 544; page = 544 * 1024 = 557,056 (Mamba padded to it)
    assert layout.block_size == 544
    assert layout.page_size_bytes == 557056
    assert layout.mamba_state_bytes_per_request == 36 * 548864
    # 12 full + 36 Mamba: group_size 12, 1 + 3 groups
    assert (layout.group_size, layout.num_groups) == (12, 4)
    assert layout.blocks_per_request == 482 + 3      # cdiv(262144, 544) = 482, one block per Mamba group
    low, high = gib_interval(44.59)
    # [44.585, 44.595) GiB / (557,056 * 12) = [7161.6, 7163.1)
    assert kv_capacity(layout, low).num_blocks == 7161
    assert kv_capacity(layout, high - 1).num_blocks == 7163
    capacity = kv_capacity(layout, int(44.59 * GIB))
    assert capacity.num_blocks == 7162
    assert capacity.tokens == 973760                 # 7162 // 4 * 544
    assert f"{capacity.max_concurrency:.2f}" == "14.77"  # 7162 / 485
    assert layout.bytes_per_token == 12 * 1024
    assert any("544" in note for note in layout.notes)
    assert any("padded" in note for note in layout.notes)


def test_hybrid_user_block_size_above_the_minimum_is_kept():
    layout = kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, block_size=1024))
    assert layout.block_size == 1024 and layout.page_size_bytes == 1024 * 1024
    smaller = kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, block_size=32))
    assert smaller.block_size == 544
    # an odd block: 0.11 raises it to the 16-multiple 544; 0.33 aligns to it: 100 * cdiv(548864, 100 * 1024) = 600
    assert kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, block_size=100, vllm_version="0.11")
                     ).block_size == 544
    assert kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, block_size=100, vllm_version="0.33")
                     ).block_size == 600


def test_mamba2_nemotron_h_like_state_and_block():
    mixer = MambaMixerSpec(mixer="mamba2", conv_kernel=4, num_heads=256, head_dim=64, state_size=256, n_groups=8,
                           intermediate_size=16384)
    # conv dim = 16384 + 2 * 8 * 256 = 20,480: (20480, 3) bf16 = 122,880 B; ssm (256, 64, 256) bf16 = 8,388,608 B
    assert mamba_state_bytes(mixer, 1, "bfloat16") == 122880 + 8388608
    # TP 16: n_groups 8 extended to 16 -> conv dim 16384 + 2 * 16 * 256 = 24,576 -> (1536, 3); ssm (16, 64, 256)
    assert mamba_state_bytes(mixer, 16, "bfloat16") == 1536 * 3 * 2 + 16 * 64 * 256 * 2
    kinds = [MAMBA, FULL, MAMBA, MAMBA, NONE]
    spec = make_spec(kinds, kv_heads=8, head_size=128, attention_heads=64, mamba=mixer, max_model_len=8192)
    layout = kv_layout(spec, KvSettings(vllm_version="0.11"))
    # attention per token 2 * 8 * 128 * 2 = 4,096; block = 16 * cdiv(8511488, 65536) = 16 * 130 = 2080
    assert layout.block_size == 2080
    assert layout.page_size_bytes == 2080 * 4096
    # 1 full + 3 Mamba: group_size 1 -> 4 groups; per request cdiv(8192, 2080) = 4 + 3
    assert (layout.group_size, layout.num_groups, layout.blocks_per_request) == (1, 4, 7)


def test_mamba_align_mode_holds_two_state_blocks_per_request():
    none = kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, vllm_version="0.33", mamba_cache_mode="none"))
    align = kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, vllm_version="0.33", mamba_cache_mode="align"))
    # 482 attention blocks + 1 (none) or 2 (align) per Mamba group, 3 Mamba groups
    assert (none.blocks_per_request, align.blocks_per_request) == (485, 488)
    assert align.page_size_bytes == none.page_size_bytes and align.block_size == 544
    assert request_blocks(align, 544) == 1 + 6
    with pytest.raises(InputError):
        kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, mamba_cache_mode="all"))


def test_mamba_ssm_dtype_cli_config_and_nemotron_h_default():
    mixer = MambaMixerSpec(mixer="mamba2", conv_kernel=4, num_heads=256, head_dim=64, state_size=256, n_groups=8,
                           intermediate_size=16384)
    spec = make_spec([MAMBA, FULL, MAMBA, MAMBA], kv_heads=8, head_size=128, attention_heads=64, mamba=mixer,
                     max_model_len=8192)
    nemotron = ModelSpec(**{**spec.__dict__, "architectures": ("NemotronHForCausalLM",)})
    # 0.11: SSM state in the model dtype (bf16): 122,880 + 8,388,608 -> block 16 * 130 = 2080
    assert kv_layout(nemotron, KvSettings(vllm_version="0.11")).block_size == 2080
    # 0.33: NemotronH without mamba_ssm_cache_dtype keeps it in float32: 122,880 + 16,777,216 = 16,900,096
    # -> block 16 * cdiv(16900096, 16 * 4096) = 16 * 258 = 4128
    assert kv_layout(nemotron, KvSettings(vllm_version="0.33")).block_size == 4128
    assert kv_layout(spec, KvSettings(vllm_version="0.33")).block_size == 2080      # other mamba2 models
    assert kv_layout(spec, KvSettings(mamba_ssm_cache_dtype="float32")).block_size == 4128
    assert kv_layout(nemotron, KvSettings(mamba_ssm_cache_dtype="bfloat16")).block_size == 2080
    with pytest.raises(InputError):
        kv_layout(spec, KvSettings(mamba_ssm_cache_dtype="fp8"))
    # a config naming float32: read by 0.33, ignored up to 0.12 (only the CLI flag counted then)
    named = make_spec([MAMBA, FULL, MAMBA, MAMBA], kv_heads=8, head_size=128, attention_heads=64, max_model_len=8192,
                      mamba=MambaMixerSpec(**{**mixer.__dict__, "ssm_state_dtype": "float32"}))
    assert kv_layout(named, KvSettings(vllm_version="0.12")).block_size == 2080
    assert kv_layout(named, KvSettings(vllm_version="0.33")).block_size == 4128
    assert kv_layout(named, KvSettings(vllm_version="0.12", mamba_ssm_cache_dtype="float32")).block_size == 4128


def test_mamba_cache_mode_defaults_by_version():
    """0.33 turns prefix caching on for hybrid models in 'align' mode; 0.10.2-0.12 keep one state block."""
    for version, mode, per_request in (("0.10.2", "none", 485), ("0.12", "none", 485), ("0.33", "align", 488)):
        layout = kv_layout(QWEN3_NEXT, KvSettings(tensor_parallel_size=2, vllm_version=version))
        assert (layout.mamba_cache_mode, layout.blocks_per_request) == (mode, per_request)
        assert any(f"'{mode}'" in note for note in layout.assumptions)
    # no Mamba layers: no assumption to report
    assert not kv_layout(LLAMA_3_1_8B, KvSettings()).assumptions


def test_max_model_len_beyond_the_model_is_warned():
    layout = kv_layout(LLAMA_3_1_8B, KvSettings(max_model_len=200000))
    assert layout.max_model_len == 200000 and layout.blocks_per_request == 12500
    assert any("VLLM_ALLOW_LONG_MAX_MODEL_LEN" in note for note in layout.assumptions)
    assert not kv_layout(LLAMA_3_1_8B, KvSettings(max_model_len=131072)).assumptions


@pytest.mark.parametrize("text, expected", [
    ("0.11", "0.11"), ("0.11.0", "0.11"), ("v0.11.2", "0.11"), ("0.12.0+cu128", "0.12"), ("0.10.2", "0.10.2"),
    ("0.10.2.post1", "0.10.2"), ("0.33.0", "0.33"), ("0.10.1", "0.10.1"), ("0.9", "0.9"), ("latest", "latest"),
])
def test_normalize_vllm_version(text, expected):
    from kvadvise.plan.kv import normalize_vllm_version

    assert normalize_vllm_version(text) == expected


# ---------------------------------------------------------------------------------------------- checkpoint KV dtype

def _modelopt_fp8_llama_70b(tmp_path):
    """nvidia/Llama-3.1-70B-Instruct-FP8 as vLLM reads it: config.json + ModelOpt's hf_quant_config.json
    (kv_cache_quant_algo "FP8"), both the real files under tests/data/configs."""
    from pathlib import Path

    from kvadvise.model.spec import load_model_spec

    configs = Path(__file__).parent / "data" / "configs"
    (tmp_path / "config.json").write_text((configs / "nvidia__Llama-3.1-70B-Instruct-FP8.json").read_text())
    (tmp_path / "hf_quant_config.json").write_text(
        (configs / "nvidia__Llama-3.1-70B-Instruct-FP8.hf_quant_config.json").read_text())
    return load_model_spec(str(tmp_path))


def test_auto_kv_dtype_follows_the_modelopt_checkpoint_under_the_newest_rules(tmp_path):
    spec = _modelopt_fp8_llama_70b(tmp_path)
    # vLLM 0.33 resolve_kv_cache_dtype_string: auto -> "fp8_e4m3"; page = 2 * 16 * 8 kv heads * 128 * 1 B = 32,768
    layout = kv_layout(spec, KvSettings(vllm_version="0.33"))
    assert (layout.kv_cache_dtype, layout.kv_cache_dtype_bytes, layout.page_size_bytes) == ("fp8_e4m3", 1, 32768)
    assert any("auto resolved to fp8_e4m3" in note for note in layout.notes) and not layout.assumptions
    # 20 GiB / 32,768 / 80 layers = 8,192 blocks = 131,072 tokens = one request of 131,072 (1.00x)
    capacity = kv_capacity(layout, 20 * GIB)
    assert (capacity.num_blocks, capacity.tokens, capacity.max_concurrency) == (8192, 131072, 1.0)
    # an explicit dtype wins, as in vLLM (resolve_kv_cache_dtype_string returns non-auto values unchanged)
    explicit = kv_layout(spec, KvSettings(vllm_version="0.33", kv_cache_dtype="bfloat16"))
    assert (explicit.kv_cache_dtype, explicit.page_size_bytes, explicit.notes) == ("bfloat16", 65536, ())


@pytest.mark.parametrize("version", ["0.10.2", "0.11", "0.12"])
def test_auto_kv_dtype_is_the_model_dtype_up_to_0_12_with_a_warning(tmp_path, version):
    # vLLM <= 0.12: auto = the model dtype even with kv_cache_quant_algo FP8 (PR #29980/#30785 came after 0.12.0):
    # page = 2 * 16 * 8 * 128 * 2 B = 65,536; 20 GiB / 65,536 / 80 = 4,096 blocks = 65,536 tokens (0.50x)
    layout = kv_layout(_modelopt_fp8_llama_70b(tmp_path), KvSettings(vllm_version=version))
    assert (layout.kv_cache_dtype, layout.page_size_bytes) == ("bfloat16", 65536)
    capacity = kv_capacity(layout, 20 * GIB)
    assert (capacity.num_blocks, capacity.tokens, capacity.max_concurrency) == (4096, 65536, 0.5)
    assert any("--kv-cache-dtype fp8_e4m3" in note for note in layout.assumptions)


def test_unknown_vllm_version_hint_names_the_nearest_rules():
    with pytest.raises(InputError) as caught:
        vllm_rules("0.19")
    assert "0.12 mirror those releases" in caught.value.hint and "0.11 covers" not in caught.value.hint
