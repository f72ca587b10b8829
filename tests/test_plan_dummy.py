"""kvadvise.plan.dummy: vLLM's default batch limits, dummy request split and CUDA-graph sizes, by hand."""

from __future__ import annotations

import pytest

from kvadvise.plan.dummy import (DummyRunPlan, cuda_graph_capture_sizes, plan_dummy_run,
                                 vllm_default_batch)

GIB = 1 << 30
# total memory of common cards, about what CUDA reports (bytes; only the tier boundaries matter here)
H100_80GB = 85_029_158_912      # 79.19 GiB
A100_80GB = 85_097_971_712      # 79.25 GiB
L4 = 23_580_639_232             # 21.96 GiB
B200 = 191_514_968_064          # 178.36 GiB (the device of the gemma-3 log in the reference)


def test_split_is_even_with_the_remainder_on_the_last_request():
    plan = plan_dummy_run(8192, 256)
    assert plan.num_reqs == 256
    assert set(plan.tokens_per_request) == {32}
    assert plan.sampler_rows == 256
    plan = plan_dummy_run(10, 3)
    assert plan.tokens_per_request == (3, 3, 4)
    assert plan.last_token_indices == (2, 5, 9)
    assert plan.positions == (0, 1, 2, 0, 1, 2, 0, 1, 2, 3)


def test_fewer_tokens_than_sequences_gives_one_token_per_request():
    plan = plan_dummy_run(5, 8)
    assert plan == DummyRunPlan(num_tokens=5, num_reqs=5, tokens_per_request=(1, 1, 1, 1, 1), sampler_rows=5)


def test_vllm_default_split_of_2048_tokens_in_256_and_odd_sizes():
    plan = plan_dummy_run(2048, 256)
    assert plan.tokens_per_request == (8,) * 256
    plan = plan_dummy_run(8193, 1024)   # 8193 = 1024 * 8 + 1
    assert plan.tokens_per_request[:-1] == (8,) * 1023 and plan.tokens_per_request[-1] == 9
    assert sum(plan.tokens_per_request) == 8193


@pytest.mark.parametrize("tokens, seqs", [(0, 4), (4, 0), (-1, 1)])
def test_non_positive_limits_are_refused(tokens, seqs):
    with pytest.raises(ValueError):
        plan_dummy_run(tokens, seqs)


@pytest.mark.parametrize("total, name, version, expected", [
    (H100_80GB, "NVIDIA H100 80GB HBM3", "0.11", (8192, 1024)),
    (A100_80GB, "NVIDIA A100-SXM4-80GB", "0.11", (2048, 256)),   # the A100 exception (vLLM PR #17885)
    (L4, "NVIDIA L4", "0.11", (2048, 256)),
    (B200, "NVIDIA B200", "0.11", (8192, 1024)),
    (B200, "NVIDIA B200", "0.33", (16384, 1024)),                # the >= 160 GiB tier
    (H100_80GB, "NVIDIA H100 80GB HBM3", "0.33", (8192, 1024)),
    (70 * GIB, None, "0.11", (8192, 1024)),                      # boundary: >= 70 GiB
    (70 * GIB - 1, None, "0.11", (2048, 256)),
    (160 * GIB - 1, "x", "0.33", (8192, 1024)),
])
def test_default_batch_for_the_api_server(total, name, version, expected):
    assert vllm_default_batch(total, name, version) == expected


def test_default_batch_for_the_offline_llm_class():
    assert vllm_default_batch(H100_80GB, "NVIDIA H100", "0.11", usage="llm") == (16384, 1024)
    assert vllm_default_batch(L4, "NVIDIA L4", "0.11", usage="llm") == (8192, 256)
    with pytest.raises(ValueError):
        vllm_default_batch(L4, "NVIDIA L4", "0.11", usage="serve")


def test_capture_sizes_011_default_for_256_seqs():
    sizes = cuda_graph_capture_sizes(256, 2048, "0.11")
    # [1, 2, 4] + range(8, min(2 * 256, 512) + 1, 8): 3 + 64 sizes, largest first
    assert len(sizes) == 67
    assert sizes[:3] == (512, 504, 496) and sizes[-4:] == (8, 4, 2, 1)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_capture_sizes_are_cut_at_the_token_budget_and_follow_max_num_seqs():
    assert cuda_graph_capture_sizes(256, 20, "0.11") == (16, 8, 4, 2, 1)
    assert cuda_graph_capture_sizes(8, 2048, "0.11") == (16, 8, 4, 2, 1)    # max = 2 * 8
    assert cuda_graph_capture_sizes(1, 2048, "0.11") == (4, 2, 1)           # 0.11 keeps [1, 2, 4]
    assert cuda_graph_capture_sizes(1024, 8192, "0.11")[0] == 512           # capped at 512


def test_capture_sizes_newer_rule():
    sizes = cuda_graph_capture_sizes(256, 8192, "0.33")
    # [1, 2, 4] + range(8, 256, 8) (31 sizes) + range(256, 513, 16) (17 sizes)
    assert len(sizes) == 3 + 31 + 17
    assert sizes[:3] == (512, 496, 480)
    assert 248 in sizes and 264 not in sizes and 272 in sizes
    assert cuda_graph_capture_sizes(256, 8192, "0.33", max_capture_size=64)[0] == 64


def test_cublas_workspace_by_compute_capability():
    from kvadvise.plan.dummy import cublas_workspace_bytes

    # torch CublasHandlePool.cpp: ":4096:2:16:8" = 4096 KiB x 2 + 16 KiB x 8; 4096 KiB x 8 on Hopper/Blackwell
    assert cublas_workspace_bytes(8) == 8_519_680
    assert cublas_workspace_bytes(9) == cublas_workspace_bytes(10) == cublas_workspace_bytes(12) == 33_554_432
    assert cublas_workspace_bytes(None) is None


def test_cublas_workspace_by_target_family():
    from kvadvise.plan.dummy import cublas_workspace_bytes_for_family

    assert cublas_workspace_bytes_for_family("ampere") == (8_519_680, True)
    assert cublas_workspace_bytes_for_family("ada") == (8_519_680, True)        # compute capability 8.9
    assert cublas_workspace_bytes_for_family("hopper") == (33_554_432, True)
    assert cublas_workspace_bytes_for_family("blackwell") == (33_554_432, True)
    # no rule (AMD, or only --gpu-memory): the larger figure, the side that lowers "fit"
    assert cublas_workspace_bytes_for_family("cdna3") == (33_554_432, False)
    assert cublas_workspace_bytes_for_family(None) == (33_554_432, False)


def test_mamba2_groups_per_rank_follows_vllm_head_shards():
    from kvadvise.errors import InputError
    from kvadvise.plan.dummy import mamba2_groups_per_rank

    # vLLM mamba_utils.extra_groups_for_head_shards: divisible -> split; n_groups 1 -> padded to T, 1 a rank
    assert mamba2_groups_per_rank(8, 1) == 8
    assert mamba2_groups_per_rank(8, 2) == 4
    assert mamba2_groups_per_rank(8, 8) == 1
    assert mamba2_groups_per_rank(1, 4) == 1
    with pytest.raises(InputError, match="4 does not divide the 2 Mamba2 groups"):
        mamba2_groups_per_rank(2, 4)


def test_scheduler_refuses_fewer_batched_tokens_than_sequences():
    from kvadvise.errors import InputError
    from kvadvise.plan.dummy import check_scheduler_limits

    check_scheduler_limits(8192, 8192)
    with pytest.raises(InputError, match=r"8192 is below --max-num-seqs 100000"):
        check_scheduler_limits(8192, 100000)
