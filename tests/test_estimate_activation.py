"""Peak activation without memory: the runner's dummy run under FakeTensorMode vs the same run on real CPU
tensors; the representative-layer shortcut vs the full trace; the analytic fallback."""

from __future__ import annotations

import pytest

from kvadvise.estimate.activation import (analytic_activation_bytes, build_fake_model, estimate_activation,
                                          representative_layers)
from kvadvise.plan.dummy import plan_dummy_run
from kvadvise.profile.build import ShardShape, build_model, model_tensors
from kvadvise.profile.runner import dummy_run, make_dummy_inputs
from kvadvise.profile.tracker import LiveBytesTracker
from tests.tiny_models import tiny_config, tiny_spec

PLAN = plan_dummy_run(192, 12)


def _real_cpu_peak(spec, plan, shape=ShardShape(), run_sampler=True):
    """The profile's CPU measurement: real tensors, the tracker active since before the load."""
    model = build_model(spec, load_format="dummy", dtype="bfloat16", device="cpu", shape=shape)
    tracker = LiveBytesTracker()
    tracker.adopt(model_tensors(model))
    with tracker:
        inputs = make_dummy_inputs(plan, model, device="cpu")
        before = tracker.reset_peak()
        dummy_run(model, spec, plan, device="cpu", run_sampler=run_sampler, sampler_version="0.11", shape=shape,
                  inputs=inputs)
        return tracker.peak_bytes - before


def _mixed(name: str) -> dict:
    """Tiny configs with more layers than kinds, so the shortcut really drops layers."""
    if name == "gemma3":
        config = tiny_config("gemma3", layers=7)
        config["text_config"]["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention",
                                                "sliding_attention", "full_attention", "sliding_attention",
                                                "full_attention"]
        return config
    if name == "deepseek_v2":
        config = tiny_config("deepseek_v2", layers=5)
        config["first_k_dense_replace"] = 2          # dense, dense, MoE, MoE, MoE
        return config
    return tiny_config(name, layers=5)


@pytest.mark.parametrize("name", ("llama", "qwen2", "gemma3", "deepseek_v2", "mixtral"))
def test_fake_trace_equals_the_real_cpu_run(name):
    """estimate vs the CPU profile path: the same run on fake tensors books the same bytes (target: 5%)."""
    config = _mixed(name)
    spec = tiny_spec(config)
    real = _real_cpu_peak(spec, PLAN)
    fake = estimate_activation(spec, PLAN, dtype="bfloat16", shape=ShardShape(), run_sampler=True,
                               sampler_rule="0.11", shortcut=False)
    assert fake.method == "fake-tensor trace"
    assert fake.activation_peak_bytes == real


@pytest.mark.parametrize("name, kept", [("llama", 2), ("qwen2", 2), ("gemma3", 3), ("deepseek_v2", 3),
                                        ("mixtral", 2)])
def test_representative_layers_trace_equals_the_full_trace(name, kept):
    """The shortcut (layer 0 + the first later layer of every distinct structure) loses nothing: the peak
    of a full trace and of the shortcut are the same to the byte."""
    spec = tiny_spec(_mixed(name))
    full = estimate_activation(spec, PLAN, dtype="bfloat16", shape=ShardShape(), run_sampler=True,
                               sampler_rule="0.11", shortcut=False)
    short = estimate_activation(spec, PLAN, dtype="bfloat16", shape=ShardShape(), run_sampler=True,
                                sampler_rule="0.11")
    assert (short.traced_layers, short.total_layers) == (kept, spec.num_layers)
    assert short.activation_peak_bytes == full.activation_peak_bytes


def test_shortcut_keeps_one_layer_of_each_kind():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kvadvise.profile.build import locate_parts

    spec = tiny_spec(_mixed("deepseek_v2"))
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = build_fake_model(spec, dtype="bfloat16", shape=ShardShape(), fake_mode=fake_mode)
    assert representative_layers(model) == (3, 5)
    kinds = [type(layer.mlp).__name__ for layer in locate_parts(model).decoder.layers]
    assert kinds == ["DeepseekV2MLP", "DeepseekV2MLP", "DeepseekV2Moe"]


@pytest.mark.parametrize("shape", [ShardShape(tensor_parallel_size=2), ShardShape(partition=(1, 1), stage=0),
                                   ShardShape(partition=(1, 1), stage=1)])
def test_ranks_and_stages_match_the_real_cpu_run(shape):
    spec = tiny_spec(tiny_config("qwen2"))
    real = _real_cpu_peak(spec, PLAN, shape=shape, run_sampler=shape.is_last_stage)
    fake = estimate_activation(spec, PLAN, dtype="bfloat16", shape=shape, run_sampler=shape.is_last_stage,
                               sampler_rule="0.11")
    assert fake.activation_peak_bytes == real


def test_big_model_costs_no_memory():
    """DeepSeek-V3's TP-8 shard at 16,384 tokens: traced on fake tensors with a 2-3 layer model, in seconds."""
    import resource
    from pathlib import Path

    from kvadvise.model.spec import load_model_spec

    spec = load_model_spec(str(Path(__file__).parent / "data" / "configs" / "deepseek-ai__DeepSeek-V3.json"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    estimate = estimate_activation(spec, plan_dummy_run(16384, 1024), dtype="bfloat16",
                                   shape=ShardShape(tensor_parallel_size=8), run_sampler=True, sampler_rule="0.11")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert estimate.method == "fake-tensor trace"
    assert (estimate.traced_layers, estimate.total_layers) == (3, 61)     # dense at 0, dense at 1, MoE
    # the sampler alone holds 1024 rows x 129,280 vocabulary x (2 + 4 + 4 + 8 + 1 + 4 + 1 + 4) B at its peak
    assert estimate.activation_peak_bytes > 1024 * 129_280 * 28
    assert grown_kib < 1024 * 1024          # far below the GiBs the traced tensors would take


def test_analytic_fallback_when_the_trace_fails(monkeypatch):
    import kvadvise.profile.runner as runner

    def broken(*args, **kwargs):
        raise RuntimeError("data-dependent output")

    monkeypatch.setattr(runner, "dummy_run", broken)
    spec = tiny_spec(tiny_config("llama"))
    estimate = estimate_activation(spec, PLAN, dtype="bfloat16", shape=ShardShape(), run_sampler=True,
                                   sampler_rule="0.11")
    assert estimate.method == "analytic"
    assert "could not be traced" in estimate.warnings[0]
    assert estimate.activation_peak_bytes == analytic_activation_bytes(spec, PLAN, dtype="bfloat16")


def test_analytic_formula_by_hand():
    # tiny llama: T = 192 tokens, R = 12 requests, H = 64, 4 heads / 2 kv of 16, intermediate 128, V = 512
    spec = tiny_spec(tiny_config("llama"))
    attention = (4 + 2 * 2) * 16 * 2                        # 256
    mlp = 3 * 128                                          # 384
    forward = 192 * 2 * (4 * 64 + max(attention, mlp))     # 245,760
    sampler = 12 * 512 * (2 + 36) + 12 * 64 * 2               # 36 B an entry beyond the bf16 logits (test below)
    assert analytic_activation_bytes(spec, PLAN, dtype="bfloat16") == forward + sampler
    # the analytic figure is within a factor of 2 of the trace on this model (it is only a fallback)
    traced = estimate_activation(spec, PLAN, dtype="bfloat16", shape=ShardShape(), run_sampler=True,
                                 sampler_rule="0.11").activation_peak_bytes
    assert traced / 2 < forward + sampler < traced * 2


# ------------------------------------------------------------------ CUDA-graph pool -------------------------

@pytest.mark.parametrize("name", ("llama", "deepseek_v2"))
def test_decode_pool_trace_equals_the_real_decode_step(name):
    """The graph pool estimate (one decode step at the largest capture size, fake tensors, shortcut model)
    equals the same step run on real CPU tensors of the whole model."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kvadvise.estimate.graphs import GRAPH_BYTES_PER_SIZE, estimate_graphs, trace_decode_pool
    from kvadvise.profile.runner import prepare_decode_capture

    spec = tiny_spec(_mixed(name))
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = build_fake_model(spec, dtype="bfloat16", shape=ShardShape(), fake_mode=fake_mode)
    representative_layers(model)
    pool = trace_decode_pool(model, spec, 24, shape=ShardShape(), fake_mode=fake_mode)

    real_model = build_model(spec, load_format="dummy", dtype="bfloat16", device="cpu")
    capture = prepare_decode_capture(real_model, spec, [24], device="cpu", shape=ShardShape())
    tracker = LiveBytesTracker()
    tracker.adopt(model_tensors(real_model))
    tracker.adopt([capture.inputs.input_ids, capture.inputs.positions])
    with tracker:
        before = tracker.reset_peak()
        output = capture.make_step(24)()
        real = tracker.peak_bytes - before
        del output
    assert pool == real > 0
    graphs = estimate_graphs(model, spec, [24, 16, 8, 4, 2, 1], shape=ShardShape(), fake_mode=fake_mode)
    assert graphs.cuda_graph_bytes == pool + 6 * GRAPH_BYTES_PER_SIZE


@pytest.mark.parametrize("rows, vocab, hidden", [(256, 128256, 4096), (1024, 262208, 2560)])
def test_model_runner_v2_sampler_term_matches_its_trace(rows, vocab, hidden):
    """sampler.v2_sampler_bytes (the analytic fallback's 0.33 term) against the mirrored Model Runner V2
    sampler traced under fake tensors, a second method: within 0.1% (the allocator rounds each tensor)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kvadvise.profile.sampler import sampler_bytes, v2_dummy_sampler_run, v2_sampler_bytes
    from kvadvise.profile.tracker import LiveBytesTracker

    with FakeTensorMode():
        sample_hidden = torch.empty(rows, hidden, dtype=torch.bfloat16)
        lm_head = torch.empty(vocab, hidden, dtype=torch.bfloat16)
        positions = torch.zeros(8192, dtype=torch.int64)
        input_ids = torch.zeros(8192, dtype=torch.int32)
        indices = torch.arange(rows, dtype=torch.int64)
        with LiveBytesTracker() as tracker:
            start = tracker.current_bytes
            v2_dummy_sampler_run(sample_hidden, lambda h: h @ lm_head.t(), positions, input_ids, indices)
            traced = tracker.peak_bytes - start
    formula = v2_sampler_bytes(rows, vocab, 2)
    # by hand: bf16 logits, 12 bytes per 1024-entry block, 32 bytes of row tensors
    assert formula == rows * vocab * 2 + rows * -(-vocab // 1024) * 12 + rows * 32
    assert abs(formula - traced) / traced < 0.001, (formula, traced)
    assert sampler_bytes("0.33", rows, vocab, hidden, 2) == formula
    assert sampler_bytes("0.12", rows, vocab, hidden, 2) == rows * vocab * 38 + rows * hidden * 2


@pytest.mark.parametrize("rows, vocab, hidden", [(256, 128256, 4096), (1024, 152064, 5120)])
def test_analytic_sampler_term_matches_the_traced_sampler(rows, vocab, hidden):
    """The fallback formula's sampler share (R x V x (b + 36) + R x H x b) against the mirrored sampler
    traced under fake tensors (a second method): within 0.1%. The logits come out of the lm_head in the
    model dtype, as the runner's compute_logits gives them; the sampler makes its own float32 copy."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kvadvise.profile.sampler import SAMPLER_BYTES_PER_ENTRY, dummy_sampler_run
    from kvadvise.profile.tracker import LiveBytesTracker

    with FakeTensorMode():
        hidden_states = torch.empty(rows, hidden, dtype=torch.bfloat16)
        lm_head = torch.empty(vocab, hidden, dtype=torch.bfloat16)
        with LiveBytesTracker() as tracker:
            start = tracker.current_bytes
            dummy_sampler_run(hidden_states, lambda h: h @ lm_head.t())
            traced = tracker.peak_bytes - start
    formula = rows * vocab * (2 + SAMPLER_BYTES_PER_ENTRY) + rows * hidden * 2
    # by hand: bf16 logits 2 + float32 copy 4 + sorted values 4 + int64 indices 8 + sort workspace 20
    assert SAMPLER_BYTES_PER_ENTRY == 38 - 2
    assert abs(formula - traced) / traced < 0.001, (formula, traced)
