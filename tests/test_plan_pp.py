"""kvadvise.plan.pp: vLLM's default split, per-stage budgets, uniform vs proportional, the optimal partition.

Expected figures are worked out by hand in the comments (page of one layer = 2 x 16 x 8 x 128 x 2 B =
64 KiB; a stage of l layers spends l x 64 KiB per block) or by a brute force over every partition.
"""

from __future__ import annotations

import itertools
import random
import time

import pytest

from kvadvise.errors import InputError
from kvadvise.model.spec import LayerKind, LayerSpec, ModelSpec
from kvadvise.plan import pp
from kvadvise.plan.kv import KvSettings

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10
BUFFER = 150 * MIB   # vLLM's suggestion-line redundancy buffer


def dense_spec(num_layers: int = 64) -> ModelSpec:
    """A Qwen3-32B-like dense GQA model: 8 KV heads x 128, bf16 -> 64 KiB per layer per 16-token block."""
    layers = tuple(LayerSpec(index=i, kind=LayerKind.FULL, num_kv_heads=8, head_size=128) for i in range(num_layers))
    return ModelSpec(model_id="test/dense-64", config_path="<dict>", model_type="qwen3",
                     architectures=("Qwen3ForCausalLM",), num_layers=num_layers, layers=layers, hidden_size=5120,
                     intermediate_size=25600, vocab_size=151936, num_attention_heads=64, num_kv_heads=8,
                     head_size=128, dtype="bfloat16", max_model_len=4096)


def stage_memory(partition, layer_bytes, first_extra, last_extra, activation, last_activation):
    """Non-KV terms by hand: extras stay on the first / last stage, layer weights move with the layers."""
    result = []
    for s, count in enumerate(partition):
        weights = count * layer_bytes + (first_extra if s == 0 else 0) + (last_extra if s == len(partition) - 1 else 0)
        act = last_activation if s == len(partition) - 1 else activation
        result.append(pp.StageNonKv(weights, act, 0, 0, "given"))
    return result


# ------------------------------------------------------------------ partitions


@pytest.mark.parametrize("layers, stages, expected", [
    (32, 3, (11, 11, 10)),      # vLLM's own docstring example (reference section 6)
    (62, 4, (15, 16, 16, 15)),  # remainder 2 -> stages -2 and -3
    (64, 2, (32, 32)),
    (10, 4, (2, 3, 3, 2)),
    (7, 7, (1,) * 7),
    (9, 4, (2, 2, 3, 2)),       # remainder 1 -> stage -2
    (11, 4, (3, 3, 3, 2)),      # remainder 3 = pp - 1 reaches stage 0, never the last
])
def test_default_partition_mirrors_get_pp_indices(layers, stages, expected):
    assert pp.default_partition(layers, stages) == expected
    assert sum(expected) == layers


def test_default_partition_rejects_more_stages_than_layers():
    with pytest.raises(InputError, match="only 4 layers"):
        pp.default_partition(4, 5)


@pytest.mark.parametrize("partition, message", [
    ((48, 15), "sums to 63 layers but the model has 64"),
    ((64, 0), "stage 1 has 0 layers"),
    ((70, -6), "stage 1 has -6 layers"),
    ((1,) * 65, "65 stages but the model has only 64 layers"),
])
def test_check_partition_rejects(partition, message):
    with pytest.raises(InputError, match=message):
        pp.check_partition(partition, 64)


def test_parse_partition():
    assert pp.parse_partition("48, 16") == (48, 16)
    with pytest.raises(InputError):
        pp.parse_partition("48;16")


def test_shrink_rule_by_version():
    assert not pp.shrinks_to_minimum("0.10.2")
    assert not pp.shrinks_to_minimum("0.11")
    assert pp.shrinks_to_minimum("0.12")
    assert pp.shrinks_to_minimum("0.33")


# ------------------------------------------------------------------ 48,16 on equal cards


def plan_48_16(version: str, partition=(48, 16)):
    """80 GiB cards at util 0.75 (60 GiB requested, exact in binary). 1 GiB per layer; the first stage
    carries a 2 GiB embedding and 1 GiB of activations, the last a 2 GiB lm_head and 4 GiB (sampler)."""
    cards = [pp.StageCard("80G", 80 * GIB, 0.75)] * 2
    memory = stage_memory(partition, GIB, 2 * GIB, 2 * GIB, GIB, 4 * GIB)
    settings = KvSettings(vllm_version=version, max_model_len=4096)
    return pp.plan_pp_split(dense_spec(), settings, partition, cards=cards, non_kv=memory,
                            layer_weights_bytes=[GIB] * 64)


@pytest.mark.parametrize("version", ["0.11", "0.33"])
def test_48_16_uniform_and_proportional(version):
    plan = plan_48_16(version)
    stage0, stage1 = plan.stages
    # fit = 60 GiB - non-KV - 150 MiB: stage 0 non-KV 48 + 2 + 1 = 51 GiB; stage 1 16 + 2 + 4 = 22 GiB
    assert stage0.fit_kv_cache_memory_bytes == 9 * GIB - BUFFER == 9066 * MIB
    assert stage1.fit_kv_cache_memory_bytes == 38 * GIB - BUFFER
    assert stage0.kv_bytes_per_token == 48 * 4 * KIB and stage1.kv_bytes_per_token == 16 * 4 * KIB
    assert (stage0.bytes_per_block, stage1.bytes_per_block) == (3 * MIB, 1 * MIB)
    # uniform: stage 0 binds: 9066 MiB // 3 MiB = 3022 blocks, the budget is exactly its fit
    assert plan.uniform.kv_cache_memory_bytes == 9066 * MIB
    assert plan.uniform.num_blocks == 3022
    assert plan.uniform.tokens == 3022 * 16
    assert plan.uniform.max_concurrency == 3022 / 256           # 4096 / 16 = 256 blocks per request
    # ... which stage 1 turns into three times the blocks (tokens) the engine can use
    assert stage0.uniform_num_blocks == 3022
    assert stage1.uniform_num_blocks == 9066 == 3 * stage0.uniform_num_blocks
    assert plan.bottleneck_stage == 0
    # proportional: the same capacity for 3:1 budgets; frees stage 1's surplus
    assert plan.proportional.num_blocks == 3022
    assert stage0.proportional_kv_cache_memory_bytes == 3022 * 3 * MIB
    assert stage1.proportional_kv_cache_memory_bytes == 3022 * 1 * MIB
    assert stage0.proportional_kv_cache_memory_bytes == 3 * stage1.proportional_kv_cache_memory_bytes
    assert stage1.idle_bytes_uniform == (9066 - 3022) * MIB
    assert stage0.idle_bytes_uniform == 0
    assert plan.proportional_saved_bytes == (9066 - 3022) * MIB
    # 0.10.2-0.11 keep stage 1's tensors at 9066 blocks (reserved, unusable); 0.12+ shrink them
    expected_allocated = 3022 * MIB if plan.shrink else 9066 * MIB
    assert stage1.uniform_allocated_bytes == expected_allocated
    assert plan.idle_kind == ("left_idle" if plan.shrink else "reserved_unusable")
    assert plan.command == ("VLLM_PP_LAYER_PARTITION=48,16 vllm serve test/dense-64 --pipeline-parallel-size 2 "
                            f"--max-model-len 4096 --gpu-memory-utilization 0.75 "
                            f"--kv-cache-memory-bytes {9066 * MIB}")


def test_48_16_suggestion_newer_vllm():
    """0.12+: blocks = min over stages of fit_s // (l_s x 64 KiB), in MiB x 16 / l:
    33,31: stage 0 (57-33) GiB - 150 MiB = 24426 MiB -> 24426*16//33 = 11842; stage 1 (54-31) GiB - 150 MiB =
    23402 MiB -> 23402*16//31 = 12078 -> 11842.  32,32: 25450*16//32 = 12725, 22378*16//32 = 11189 -> 11189.
    34,30: 23402*16//34 = 11012. So 33,31: the even split less the last stage's larger extras."""
    plan = plan_48_16("0.33")
    suggestion = plan.suggestion
    assert suggestion.partition == (33, 31)
    assert suggestion.capacity.num_blocks == 11842
    assert suggestion.capacity.tokens == 11842 * 16
    assert suggestion.gain_tokens == (11842 - 3022) * 16
    assert suggestion.gain_percent == round(100 * (11842 - 3022) / 3022, 2)
    assert not suggestion.already_optimal
    assert suggestion.layers_moved == 15
    # one budget for both ranks: 11842 blocks x the larger stage's 33 x 64 KiB
    assert suggestion.capacity.kv_cache_memory_bytes == 11842 * 33 * 64 * KIB
    assert suggestion.command.startswith("VLLM_PP_LAYER_PARTITION=33,31 vllm serve test/dense-64 "
                                         "--pipeline-parallel-size 2 ")
    assert suggestion.command.endswith(f"--kv-cache-memory-bytes {11842 * 33 * 64 * KIB}")


def test_48_16_suggestion_older_vllm():
    """0.10.2-0.11: every stage allocates the whole budget, so blocks = min fit // max unit:
    33,31: min(24426, 23402) MiB * 16 // 33 = 11346; 32,32: 22378*16//32 = 11189; 34,30: 23402*16//34 = 11012."""
    plan = plan_48_16("0.11")
    assert plan.suggestion.partition == (33, 31)
    assert plan.suggestion.capacity.num_blocks == 11346
    assert plan.suggestion.capacity.kv_cache_memory_bytes == 23402 * MIB   # the smaller stage fit
    assert plan.suggestion.capacity.tokens == 11346 * 16


def test_given_partition_already_optimal():
    plan = plan_48_16("0.33", partition=(33, 31))
    assert plan.suggestion.already_optimal
    assert plan.suggestion.partition == (33, 31)
    assert plan.suggestion.gain_tokens == 0
    assert plan.suggestion.layers_moved == 0


# ------------------------------------------------------------------ 16 GB + 32 GB


def test_16_and_32_gib_cards():
    """util 0.75: 12 GiB and 24 GiB requested. 128 MiB per layer; 512 MiB embedding and lm_head, 512 MiB
    activations on each stage. Given 32,32 each stage's non-KV is 4 GiB + 1 GiB = 5120 MiB."""
    cards = [pp.StageCard(None, 16 * GIB, 0.75), pp.StageCard(None, 32 * GIB, 0.75)]
    layer = 128 * MIB
    memory = stage_memory((32, 32), layer, 512 * MIB, 512 * MIB, 512 * MIB, 512 * MIB)
    settings = KvSettings(vllm_version="0.33", max_model_len=4096)
    plan = pp.plan_pp_split(dense_spec(), settings, (32, 32), cards=cards, non_kv=memory,
                            layer_weights_bytes=[layer] * 64)
    stage0, stage1 = plan.stages
    assert stage0.fit_kv_cache_memory_bytes == (12288 - 5120 - 150) * MIB
    assert stage1.fit_kv_cache_memory_bytes == (24576 - 5120 - 150) * MIB
    # equal layers: blocks = fit // 2 MiB: 3509 on the small card, 9653 on the large one
    assert plan.uniform.num_blocks == 3509
    assert plan.bottleneck_stage == 0
    # the suggestion puts more layers on the larger card; by hand: stage 0 with l layers has
    # (12288 - 1024 - 128 l - 150) MiB -> blocks = that * 16 // l; stage 1 (24576 - 1024 - 128 m - 150)
    # l=20: (11114 - 2560)*16//20 = 6843; m=44: (23402 - 5632)*16//44 = 6461 -> 6461
    # l=21: (11114 - 2688)*16//21 = 6419 -> worse; l=19: m=45: (23402 - 5760)*16//45 = 6272 -> worse
    suggestion = plan.suggestion
    assert suggestion.partition == (20, 44)
    assert suggestion.capacity.num_blocks == 6461
    assert suggestion.gain_tokens == (6461 - 3509) * 16
    assert suggestion.partition[1] > suggestion.partition[0]


# ------------------------------------------------------------------ the search is optimal (brute force)


def brute_force(num_layers, num_stages, fit_of, unit_of, shrink):
    """Every composition of num_layers into num_stages positive parts; vLLM's rule written out again."""
    best = None
    for cuts in itertools.combinations(range(1, num_layers), num_stages - 1):
        ends = list(cuts) + [num_layers]
        starts = [0] + list(cuts)
        fits = [fit_of(s, a, b) for s, (a, b) in enumerate(zip(starts, ends))]
        units = [unit_of(a, b) for a, b in zip(starts, ends)]
        if min(fits) < 0:
            value = -1
        elif shrink:
            value = min(f // u for f, u in zip(fits, units))
        else:
            value = min(fits) // max(units)
        best = value if best is None or value > best else best
    return best


@pytest.mark.parametrize("shrink", [True, False])
def test_search_agrees_with_brute_force_on_random_cases(shrink):
    rng = random.Random(20261123 + shrink)
    for case in range(150):
        num_layers = rng.randint(1, 11)
        num_stages = rng.randint(1, min(4, num_layers))
        homogeneous = rng.random() < 0.4
        layer_weight = [rng.randint(1, 9) * 10 for _ in range(num_layers)]
        layer_page = [rng.randint(1, 4) for _ in range(num_layers)]
        if homogeneous:
            layer_weight = [layer_weight[0]] * num_layers
            layer_page = [layer_page[0]] * num_layers
        totals = [rng.randint(50, 600) for _ in range(num_stages)]
        extras = [rng.randint(0, 80) for _ in range(num_stages)]

        def fit_of(s, a, b):
            return totals[s] - extras[s] - sum(layer_weight[a:b])

        def unit_of(a, b):
            return sum(layer_page[a:b])

        search = pp.SplitSearch(num_layers, num_stages, fit_of, unit_of, shrink, units_by_count=homogeneous)
        blocks, partition = pp.best_partition(search)
        expected = brute_force(num_layers, num_stages, fit_of, unit_of, shrink)
        assert blocks == expected, (case, num_layers, num_stages)
        if expected >= 0:
            assert sum(partition) == num_layers and len(partition) == num_stages and min(partition) >= 1
            assert pp.partition_blocks(search, partition) == expected


@pytest.mark.parametrize("version", ["0.11", "0.33"])
def test_plan_suggestion_agrees_with_brute_force_on_a_small_model(version):
    """Through plan_pp_split, with layers of different weights (dense first layers, MoE after)."""
    spec = dense_spec(10)
    weights = [300 * MIB] * 3 + [700 * MIB] * 7
    cards = [pp.StageCard(None, 8 * GIB, 0.5), pp.StageCard(None, 12 * GIB, 0.5), pp.StageCard(None, 6 * GIB, 0.5)]
    partition = (4, 3, 3)
    memory = []
    for s, (a, b) in enumerate(pp.stage_ranges(partition)):
        extra = (400 * MIB if s == 0 else 0) + (600 * MIB if s == 2 else 0)
        memory.append(pp.StageNonKv(extra + sum(weights[a:b]), 256 * MIB, 0, 0, "given"))
    settings = KvSettings(vllm_version=version, max_model_len=4096)
    plan = pp.plan_pp_split(spec, settings, partition, cards=cards, non_kv=memory, layer_weights_bytes=weights)

    def fit_of(s, a, b):
        extra = (400 * MIB if s == 0 else 0) + (600 * MIB if s == 2 else 0)
        return cards[s].total_bytes // 2 - (extra + sum(weights[a:b]) + 256 * MIB) - BUFFER

    def unit_of(a, b):
        return (b - a) * 64 * KIB

    expected = brute_force(10, 3, fit_of, unit_of, pp.shrinks_to_minimum(version))
    assert plan.suggestion.capacity.num_blocks == expected
    assert [s.fit_kv_cache_memory_bytes for s in plan.stages] == [fit_of(s, a, b) for s, (a, b)
                                                                  in enumerate(pp.stage_ranges(partition))]


@pytest.mark.parametrize("version", ["0.11", "0.33"])
def test_128_layers_8_stages_is_fast(version):
    spec = dense_spec(128)
    sizes = (16, 24, 32, 48, 80, 80, 40, 16)
    cards = [pp.StageCard(None, size * GIB, 0.9) for size in sizes]
    partition = pp.default_partition(128, 8)
    memory = stage_memory(partition, 100 * MIB, GIB, GIB, GIB, 3 * GIB)
    settings = KvSettings(vllm_version=version, max_model_len=4096)
    started = time.process_time()
    plan = pp.plan_pp_split(spec, settings, partition, cards=cards, non_kv=memory,
                            layer_weights_bytes=[100 * MIB] * 128)
    elapsed = time.process_time() - started   # CPU time: busy shared cores inflate wall time
    assert elapsed < 0.5, elapsed
    assert sum(plan.suggestion.partition) == 128
    assert plan.suggestion.capacity.num_blocks >= plan.uniform.num_blocks
    # the big cards (stages 4, 5) take the most layers, the 16 GiB ends the fewest
    split = plan.suggestion.partition
    assert max(split) in (split[4], split[5]) and min(split) in (split[0], split[7])


# ------------------------------------------------------------------ a given budget


def test_given_budget_without_cards():
    """8 GiB on both ranks of 48,16: stage 0 8192 MiB // 3 MiB = 2730 blocks, stage 1 8192."""
    settings = KvSettings(vllm_version="0.33", max_model_len=4096)
    plan = pp.plan_pp_split(dense_spec(), settings, (48, 16), kv_cache_memory_bytes=8 * GIB)
    assert plan.mode == "budget"
    assert plan.uniform.kv_cache_memory_bytes == 8 * GIB
    assert plan.uniform.num_blocks == 2730
    assert [s.uniform_num_blocks for s in plan.stages] == [2730, 8192]
    assert plan.stages[1].idle_bytes_uniform == 8 * GIB - 2730 * MIB
    assert plan.stages[0].fit_kv_cache_memory_bytes is None
    # the same budget on a 32,32 split: 8192 MiB // 2 MiB = 4096 blocks
    assert plan.suggestion.partition == (32, 32)
    assert plan.suggestion.capacity.num_blocks == 4096
    assert plan.suggestion.capacity.kv_cache_memory_bytes == 8 * GIB


@pytest.mark.parametrize("version", ["0.11", "0.33"])
def test_given_budget_checked_against_cards(version):
    """Cards known and a budget given. Stage 0: 48 + 2 GiB of weights + 1 GiB activation = 51 GiB of non-KV on
    60 GiB requested (80 GiB x 0.75) -> fit 9 GiB - 150 MiB = 9066 MiB. 10 GiB // 3 MiB = 3413 blocks: stage 0
    allocates 3413 x 3 MiB = 10239 MiB under both rules (0.11: its own blocks; 0.12+: the engine's, also 3413),
    1173 MiB more than fits. The plan is infeasible: no tokens, no serve line, no gain."""
    cards = [pp.StageCard("80G", 80 * GIB, 0.75)] * 2
    memory = stage_memory((48, 16), GIB, 2 * GIB, 2 * GIB, GIB, 4 * GIB)
    settings = KvSettings(vllm_version=version, max_model_len=4096)
    plan = pp.plan_pp_split(dense_spec(), settings, (48, 16), cards=cards, non_kv=memory,
                            layer_weights_bytes=[GIB] * 64, kv_cache_memory_bytes=10 * GIB)
    assert plan.uniform_given
    assert [s.fits_uniform for s in plan.stages] == [False, True]
    assert plan.stages[0].fit_kv_cache_memory_bytes == 9066 * MIB
    assert plan.feasible is False
    assert plan.shortfalls == (pp.StageShortfall(0, 10239 * MIB, 9066 * MIB, 1173 * MIB),)
    assert plan.shortfalls[0].non_kv_fits
    assert (plan.uniform.num_blocks, plan.uniform.tokens, plan.uniform.max_concurrency) == (0, 0, 0.0)
    assert plan.uniform.kv_cache_memory_bytes == 10 * GIB and plan.command is None
    assert plan.proportional_saved_bytes is None
    # the suggestion makes it fit (partition and budget) and counts no gain against the infeasible plan
    suggestion = plan.suggestion
    assert suggestion.makes_feasible and suggestion.gain_tokens is None and suggestion.gain_percent is None
    assert suggestion.capacity.num_blocks > 0


def test_given_budget_that_fits_the_cards():
    """The same cards with 8 GiB: stage 0 allocates 2730 x 3 MiB = 8190 MiB <= 9066 MiB: feasible, 43680 tokens."""
    cards = [pp.StageCard("80G", 80 * GIB, 0.75)] * 2
    memory = stage_memory((48, 16), GIB, 2 * GIB, 2 * GIB, GIB, 4 * GIB)
    plan = pp.plan_pp_split(dense_spec(), KvSettings(vllm_version="0.11", max_model_len=4096), (48, 16),
                            cards=cards, non_kv=memory, layer_weights_bytes=[GIB] * 64, kv_cache_memory_bytes=8 * GIB)
    assert plan.feasible is True and plan.shortfalls == ()
    assert plan.uniform.num_blocks == 2730 and plan.uniform.tokens == 2730 * 16
    # the gain compares like with like: the given 48,16 at its own largest safe budget (stage 0's fit:
    # 9066 MiB // 3 MiB = 3022 blocks), not at the 8 GiB given, which would credit the split with the budget
    assert plan.suggestion.gain_tokens == plan.suggestion.capacity.tokens - 3022 * 16
    assert not plan.suggestion.makes_feasible


def test_given_budget_on_a_stage_whose_weights_overflow_its_card():
    """The reviewer's case in small: 24 GiB x 0.75 = 18432 MiB requested, 48 x 400 MiB = 19200 MiB of weights on
    stage 0 -> fit 18432 - 19200 - 150 = -918 MiB. A 1 GiB budget (0.33): the engine's 1024 // 3 = 341 blocks x
    3 MiB = 1023 MiB on stage 0, 1941 MiB over. Before: 341 x 16 = 5456 tokens reported, exit 0."""
    cards = [pp.StageCard(None, 24 * GIB, 0.75)] * 2
    memory = stage_memory((48, 16), 400 * MIB, 0, 0, 0, 0)
    plan = pp.plan_pp_split(dense_spec(), KvSettings(vllm_version="0.33", max_model_len=4096), (48, 16),
                            cards=cards, non_kv=memory, layer_weights_bytes=[400 * MIB] * 64,
                            kv_cache_memory_bytes=GIB)
    assert plan.feasible is False
    assert plan.shortfalls == (pp.StageShortfall(0, 1023 * MIB, -918 * MIB, 1941 * MIB),)
    assert not plan.shortfalls[0].non_kv_fits
    assert plan.uniform.tokens == 0 and plan.command is None
    assert plan.suggestion.makes_feasible and plan.suggestion.gain_tokens is None
    assert plan.suggestion.partition == (32, 32)    # the even split: 32 x 400 MiB leaves the most on both


def test_budget_mode_checks_nothing():
    """No cards: the given budget is assumed to fit; feasibility is unknown (None), not claimed."""
    plan = pp.plan_pp_split(dense_spec(), KvSettings(max_model_len=4096), (48, 16), kv_cache_memory_bytes=8 * GIB)
    assert plan.feasible is None and plan.shortfalls == ()
    assert plan.suggestion.gain_tokens == 0 or plan.suggestion.gain_tokens > 0


def test_no_card_and_no_budget_is_bad_input():
    with pytest.raises(InputError, match="no card"):
        pp.plan_pp_split(dense_spec(), KvSettings(), (32, 32))


def test_card_count_must_match_stages():
    cards = [pp.StageCard(None, 16 * GIB, 0.9)] * 3
    with pytest.raises(InputError, match="3 cards for 2 stages"):
        pp.plan_pp_split(dense_spec(), KvSettings(), (32, 32), cards=cards,
                         non_kv=stage_memory((32, 32), GIB, 0, 0, 0, 0))


def test_partition_that_does_not_fit():
    cards = [pp.StageCard(None, 16 * GIB, 0.75)] * 2
    memory = stage_memory((48, 16), 400 * MIB, 0, 0, 0, 0)   # 48 x 400 MiB = 18.75 GiB > 12 GiB
    plan = pp.plan_pp_split(dense_spec(), KvSettings(max_model_len=4096), (48, 16), cards=cards, non_kv=memory,
                            layer_weights_bytes=[400 * MIB] * 64)
    assert plan.uniform.kv_cache_memory_bytes is None
    assert plan.command is None
    assert plan.stages[0].idle_bytes_uniform is None
    # stage 0: 12288 - 19200 - 150 MiB = -7062 MiB of fit, no KV budget: 7062 MiB over with its non-KV alone
    assert plan.feasible is False
    assert plan.shortfalls == (pp.StageShortfall(0, 0, -7062 * MIB, 7062 * MIB),)
    assert plan.suggestion is None or (plan.suggestion.makes_feasible and plan.suggestion.gain_tokens is None)
    # 32,32: (12288 - 12800 ...) no; the best even-ish split fits: 12288 - 150 - 400 l >= 0 needs l <= 30
    assert plan.suggestion is None or max(plan.suggestion.partition) <= 30


# ------------------------------------------------------------------ the analytic estimate


def test_estimated_layer_weights_dense_bf16():
    """Qwen3-32B-like layer: q,o 5120 x 8192 each, k,v 5120 x 1024 each, MLP 3 x 5120 x 25600, 2 norms."""
    spec = dense_spec()
    params = 2 * 5120 * 8192 + 2 * 5120 * 1024 + 3 * 5120 * 25600
    assert pp.estimate_layer_weights_bytes(spec)[0] == params * 2 + 2 * 5120 * 2
    # TP 2 halves the linear layers (8 KV heads split 4 + 4); norms stay whole
    half = (2 * 5120 * 4096 + 2 * 5120 * 512 + 3 * 5120 * 12800) * 2 + 2 * 5120 * 2
    assert pp.estimate_layer_weights_bytes(spec, 2)[0] == half


def test_estimated_stage_extras():
    spec = dense_spec()
    cards = [pp.StageCard(None, 80 * GIB, 0.9)] * 2
    memory, layers = pp.estimate_stage_non_kv(spec, (32, 32), cards, KvSettings())
    embedding = 151936 * 5120 * 2       # vocab 151936 is already a multiple of 64
    assert memory[0].weights_bytes == sum(layers[:32]) + embedding
    assert memory[1].weights_bytes == sum(layers[32:]) + embedding + 5120 * 2
    assert memory[0].method == memory[1].method == "estimated"


def test_parameter_count_activation_is_the_estimate_engines_formula():
    """--parameter-counts uses the estimate engine's analytic formula (one formula, not a third) at vLLM's
    default profile batch (plan/dummy.vllm_default_batch, A100 exception included), plus the cuBLAS workspace.

    A100-80GB (ampere): vLLM keeps 2048 tokens / 256 seqs ("a100" not in name is false). First stage by hand:
    forward = 2048 tokens x 2 B x (4 x 5120 + max(attention (64 + 2 x 8) x 128 x 2 = 20480, MLP 3 x 25600 =
    76800)) = 398458880; workspace 4096 KiB x 2 + 16 KiB x 8 = 8519680 (Ampere). H100 (hopper): 8192 / 1024
    and 32 MiB. The last stage adds the sampler exactly as analytic_activation_bytes counts it."""
    from kvadvise.estimate.activation import analytic_activation_bytes
    from kvadvise.plan.dummy import plan_dummy_run

    spec = dense_spec()
    a100 = [pp.StageCard("A100-80GB", 84981841920, 0.9, None, "catalog", "ampere")] * 2
    memory, _ = pp.estimate_stage_non_kv(spec, (32, 32), a100, KvSettings(vllm_version="0.11"))
    assert memory[0].activation_peak_bytes == 2048 * 2 * (4 * 5120 + 76800) + 8519680 == 406978560
    assert memory[1].activation_peak_bytes == analytic_activation_bytes(
        spec, plan_dummy_run(2048, 256), dtype="bfloat16", run_sampler=True) + 8519680
    h100 = [pp.StageCard("H100-80GB-SXM", 85027979264, 0.9, None, "catalog", "hopper")] * 2
    memory, _ = pp.estimate_stage_non_kv(spec, (32, 32), h100, KvSettings(vllm_version="0.11"))
    assert memory[0].activation_peak_bytes == 8192 * 2 * (4 * 5120 + 76800) + 32 * MIB
    assert memory[1].activation_peak_bytes == analytic_activation_bytes(
        spec, plan_dummy_run(8192, 1024), dtype="bfloat16", run_sampler=True) + 32 * MIB
    # the sampler's share is not below the analytic formula's 28 B per row x vocabulary entry (the old
    # parameter-count rule counted 20 B: the unsafe side)
    assert memory[1].activation_peak_bytes - memory[0].activation_peak_bytes >= 1024 * 151936 * 28


# ------------------------------------------------------------------ weights of moved layers from the stages


def test_stage_extra_weights():
    """Embedding 151936 x 5120 x 2 B on the first stage; final norm 5120 x 2 B + lm_head on the last."""
    spec = dense_spec()
    embedding = 151936 * 5120 * 2
    assert pp.stage_extra_weights_bytes(spec, 3) == (embedding, 0, embedding + 10240)
    # TP 2: the (padded) vocabulary rows are split over the ranks; the norm is whole
    assert pp.stage_extra_weights_bytes(spec, 2, 2) == (embedding // 2, embedding // 2 + 10240)
    tied = ModelSpec(**{**spec.__dict__, "tie_word_embeddings": True})
    assert pp.stage_extra_weights_bytes(tied, 1) == (embedding + 10240,)      # one shared table
    assert pp.stage_extra_weights_bytes(tied, 2) == (embedding, embedding + 10240)  # the last rank's own copy


def test_layer_weights_from_stage_weights():
    """Stage weights less their extras, shared by parameter count, to the byte.
    Stage 0 (layers 0-2, estimated 100, 100, 200): 1000 - 200 = 800 -> 200, 200, 400.
    Stage 1 (layers 3-4, estimated 10 each): 71 - 0 = 71 -> 35, 36 (cumulative: 71 // 2 = 35, then 71).
    Stage 2 (layer 5): 50 - 60 < 0 -> keeps its estimate 7."""
    weights, kept = pp.layer_weights_from_stages([100, 100, 200, 10, 10, 7], (3, 2, 1), [1000, 71, 50], [200, 0, 60])
    assert weights == (200, 200, 400, 35, 36, 7)
    assert kept == (2,)


def test_moved_weights_follow_the_stage_weights_in_the_plan():
    """48,16 on equal 80 GiB cards with 1 GiB per layer measured (parameter counts would say ~1.6 GB for this
    shape): the suggestion of test_48_16_suggestion_newer_vllm is found again from the derived weights."""
    spec = dense_spec()
    memory = stage_memory((48, 16), GIB, 2 * GIB, 2 * GIB, GIB, 4 * GIB)
    counted = pp.estimate_layer_weights_bytes(spec)
    assert counted[0] != GIB
    weights, kept = pp.layer_weights_from_stages(counted, (48, 16), [m.weights_bytes for m in memory],
                                                 [2 * GIB, 2 * GIB])
    assert weights == (GIB,) * 64 and kept == ()
    cards = [pp.StageCard("80G", 80 * GIB, 0.75)] * 2
    plan = pp.plan_pp_split(spec, KvSettings(vllm_version="0.33", max_model_len=4096), (48, 16), cards=cards,
                            non_kv=memory, layer_weights_bytes=weights, layer_weights_method="measured",
                            layer_weights_source="stage weights")
    assert plan.suggestion.partition == (33, 31) and plan.suggestion.capacity.num_blocks == 11842
    assert plan.layer_weights_method == "measured" and plan.stages[0].methods["moved_layer_weights"] == "measured"
    assert (plan.stages[0].layer_weights_bytes, plan.stages[1].layer_weights_bytes) == (48 * GIB, 16 * GIB)


# ------------------------------------------------------------------ hybrid (sliding + full) models


def gemma3_spec():
    from pathlib import Path

    from kvadvise.model.spec import load_model_spec

    return load_model_spec(str(Path(__file__).parent / "data" / "pp_configs" / "gemma-3-4b-it.config.json"))


def test_hybrid_unit_shortcut_matches_kv_layout_on_every_range():
    """The fast bytes-per-block (whole-model page x the stage's largest projected group) equals
    kv_layout's own figure for every contiguous range of gemma-3-4b's 34 layers."""
    from kvadvise.plan.kv import kv_layout

    spec = gemma3_spec()
    settings = KvSettings(max_model_len=8192)
    layouts = pp._Layouts(spec, settings)
    assert not layouts.homogeneous
    unit = layouts.unit_function([(0, 17), (17, 34)])
    for a in range(34):
        for b in range(a + 1, 35):
            layout = kv_layout(spec, settings, layers=list(range(a, b)))
            assert unit(a, b) == layout.page_size_bytes * layout.group_size, (a, b)


@pytest.mark.parametrize("version", ["0.11", "0.33"])
def test_hybrid_suggestion_agrees_with_brute_force(version):
    """gemma-3-4b over three cards: brute force lays out every stage of every partition with kv_layout."""
    from kvadvise.plan.kv import kv_layout

    spec = gemma3_spec()
    settings = KvSettings(max_model_len=8192, vllm_version=version)
    weights = [100 * MIB + 10 * MIB * (i % 3) for i in range(34)]
    cards = [pp.StageCard(None, 4 * GIB, 0.75), pp.StageCard(None, 6 * GIB, 0.75), pp.StageCard(None, 5 * GIB, 0.75)]
    partition = (12, 11, 11)
    memory = []
    for s, (a, b) in enumerate(pp.stage_ranges(partition)):
        memory.append(pp.StageNonKv(sum(weights[a:b]) + (300 * MIB if s in (0, 2) else 0), 200 * MIB, 0, 0, "given"))
    plan = pp.plan_pp_split(spec, settings, partition, cards=cards, non_kv=memory, layer_weights_bytes=weights)

    def fit_of(s, a, b):
        extra = 300 * MIB if s in (0, 2) else 0
        return cards[s].total_bytes * 3 // 4 - (sum(weights[a:b]) + extra + 200 * MIB) - BUFFER

    def unit_of(a, b):
        layout = kv_layout(spec, settings, layers=list(range(a, b)))
        return layout.page_size_bytes * layout.group_size

    expected = brute_force(34, 3, fit_of, unit_of, pp.shrinks_to_minimum(version))
    assert expected > 0
    assert plan.suggestion.capacity.num_blocks == expected


def test_128_layers_8_stages_with_uneven_layer_weights_is_fast():
    """Dense first layers then heavier (MoE-like) ones: fit depends on the range, not only the count."""
    spec = dense_spec(128)
    weights = [60 * MIB] * 3 + [110 * MIB] * 125
    sizes = (16, 24, 32, 48, 80, 80, 40, 16)
    cards = [pp.StageCard(None, size * GIB, 0.9) for size in sizes]
    partition = pp.default_partition(128, 8)
    memory = [pp.StageNonKv(sum(weights[a:b]) + (GIB if s in (0, 7) else 0), GIB, 0, 0, "given")
              for s, (a, b) in enumerate(pp.stage_ranges(partition))]
    for version in ("0.11", "0.33"):
        started = time.process_time()
        plan = pp.plan_pp_split(spec, KvSettings(vllm_version=version, max_model_len=4096), partition,
                                cards=cards, non_kv=memory, layer_weights_bytes=weights)
        assert time.process_time() - started < 0.5, version
        assert plan.suggestion.capacity.num_blocks >= plan.uniform.num_blocks


def test_budget_too_small_for_one_request_warns():
    """100 MiB on 48,16: 100 MiB // 3 MiB = 33 blocks < 4096 / 16 = 256 blocks for one request."""
    plan = pp.plan_pp_split(dense_spec(), KvSettings(max_model_len=4096), (48, 16), kv_cache_memory_bytes=100 * MIB)
    assert plan.uniform.num_blocks == 33
    assert not plan.uniform.fits_one_request
    assert any("vLLM would refuse to start" in w for w in plan.warnings)
