"""`kvadvise profile` end to end: real CPU runs on tiny models made from real configs, exit codes, the JSON
contract (validated against report/schemas/profile.json), and the CUDA path's failures through the fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.report.schema import validate
from fake_device import GIB, MIB, FakeCudaDevice, ScriptedWorkload
from tiny_models import safetensors_tensor_bytes, save_tiny_checkpoint

runner = CliRunner()
EXAMPLE = Path(__file__).parent.parent / "examples" / "tiny-llama"
SMALL_BATCH = ["--max-num-batched-tokens", "64", "--max-num-seqs", "8"]
# vLLM 0.33's Model Runner V2 state at SMALL_BATCH (R 8, T 64) for the tiny vocabulary of 512 (int32 unless said),
# by hand: the sampler's tables (bin counts R x V, two R x 16-word masks, four R x 1024, two R x 128, R x 129,
# R) and the request and input buffers (2 R + R int64 + R; T x 13 + (R + 1) + 2 R)
TINY_RUNNER_STATE = 4 * (8 * 512 + 2 * 8 * 16 + 4 * 8 * 1024 + 2 * 8 * 128 + 8 * 129 + 8) + (
    4 * 2 * 8 + 8 * 8 + 4 * 8 + 13 * 64 + 4 * 9 + 4 * 2 * 8)


def _run(args):
    return runner.invoke(app, ["profile", *args])


def _json(result):
    document = json.loads(result.stdout)
    assert validate(document, "profile") == [], validate(document, "profile")
    return document


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    directory, _ = save_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny-llama"))
    return directory


# tiny Llama (from Llama-3.2-1B's config: 2 layers, hidden 64, intermediate 128, 4 heads / 2 kv heads of 16,
# vocabulary 512, tied embeddings, bf16), counted by hand:
#   embedding 512 x 64 x 2 B = 65,536; per layer q 64x64 + k 64x32 + v 64x32 + o 64x64 + MLP 3 x 64x128
#   + 2 norms x 64 = 36,992 params = 73,984 B; x 2 layers = 147,968; final norm 128 B -> 213,632 B of weights
#   + the rotary buffers inv_freq and original_inv_freq, 8 float32 each = 64 B  ->  213,696 B measured
#   + vLLM's rotary cos/sin cache, computed: max_position_embeddings 131072 x head_dim 16 x 2 B = 4,194,304 B
#   (vocabulary 512 is a multiple of 64: no padding)
TINY_LLAMA_MEASURED = 213_696
TINY_LLAMA_ROTARY_CACHE = 131072 * 16 * 2
TINY_LLAMA_WEIGHTS = TINY_LLAMA_MEASURED + TINY_LLAMA_ROTARY_CACHE


def test_cpu_auto_load_weights_are_the_checkpoint_plus_buffers(tiny_llama):
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "auto", "--gpu-memory", "24GiB",
                   *SMALL_BATCH, "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    checkpoint = sum(safetensors_tensor_bytes(tiny_llama).values())
    assert checkpoint == 213_632
    assert document["memory"]["weights_bytes"] == checkpoint + 64 + TINY_LLAMA_ROTARY_CACHE == TINY_LLAMA_WEIGHTS
    assert document["memory"]["weights_method"] == "measured"
    # the sub-line: what vLLM holds beyond the measured HF tensors, computed from the config
    assert document["memory"]["weights_vllm_buffers_bytes"] == TINY_LLAMA_ROTARY_CACHE
    assert document["memory"]["weights_vllm_buffers_method"] == "computed"
    assert document["memory"]["weights_vllm_buffers"] == {"rotary cos/sin cache": TINY_LLAMA_ROTARY_CACHE}
    assert document["device"] == {"name": None, "kind": "cpu", "source": "gpu-memory option",
                                  "total_bytes": 24 * GIB, "free_bytes_at_start": 24 * GIB, "driver_version": None,
                                  "mig_mode": None, "other_processes_bytes": None}
    # not measurable on the host: estimate's own figures, so that "fit" does not exceed vLLM's by them
    assert document["memory"]["cuda_graph_method"] == "estimated"
    assert document["memory"]["non_torch_method"] == "estimated"
    # --gpu-memory names no family: estimate's default for an unknown card, 0.16 GiB (kvadvise/estimate/graphs.py)
    # + Model Runner V2's state (vLLM 0.33's default runner), computed, shown as the non-torch sub-line
    assert document["memory"]["non_torch_bytes"] == 16 * GIB // 100 + TINY_RUNNER_STATE
    assert document["memory"]["non_torch_vllm_buffers_bytes"] == TINY_RUNNER_STATE
    assert any("non-torch memory" in w and "ESTIMATED" in w for w in document["warnings"])
    assert any("CUDA graphs cannot be captured on the host" in w for w in document["warnings"])
    assert document["measurement"]["device_measured"] == "cpu"
    assert [p["name"] for p in document["measurement"]["phases"]] == ["baseline", "load", "profile_run", "cuda_graphs"]


def test_cpu_dummy_load_matches_auto_and_advice_is_vllms_formula(tiny_llama):
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "24GiB",
                   "--util", "0.9", "--max-model-len", "4096", "--vllm-version", "0.11", *SMALL_BATCH, "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    memory, advice = document["memory"], document["advice"]
    assert memory["weights_bytes"] == TINY_LLAMA_WEIGHTS
    activation = memory["activation_peak_bytes"]
    assert activation > 0
    phase = document["measurement"]["phases"][2]
    assert activation == phase["after"]["peak_allocated_bytes"] - phase["before"]["allocated_bytes"]
    non_kv = TINY_LLAMA_WEIGHTS + activation + memory["non_torch_bytes"] + memory["cuda_graph_bytes"]
    assert memory["non_kv_bytes"] == non_kv
    # vLLM 0.11: requested = int(24 GiB x 0.9); fit = requested - non-KV - 150 MiB; full = free - non-KV - 150 MiB
    assert advice["fit"]["kv_cache_memory_bytes"] == int(24 * GIB * 0.9) - non_kv - 150 * MIB
    assert advice["full"]["kv_cache_memory_bytes"] == 24 * GIB - non_kv - 150 * MIB
    # KV: 2 layers x 2 (K, V) x 2 kv heads x 16 x 2 B = 256 B per token; block 16 -> 4,096 B per block
    fit = advice["fit"]
    assert document["kv_cache"]["bytes_per_token"] == 256
    assert fit["num_blocks"] == fit["kv_cache_memory_bytes"] // 4096
    assert fit["tokens"] == fit["num_blocks"] * 16
    assert fit["max_concurrency"] == pytest.approx(fit["num_blocks"] / (4096 // 16))
    assert fit["command"].endswith(f"--kv-cache-memory-bytes {fit['kv_cache_memory_bytes']}")
    assert "--max-model-len 4096" in fit["command"]
    assert document["settings"]["gpu_memory_utilization"] == 0.9


def test_activation_grows_with_the_batch(tiny_llama):
    def activation(tokens):
        result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "24GiB",
                       "--max-num-batched-tokens", str(tokens), "--max-num-seqs", "8", "--json"])
        assert result.exit_code == 0, result.output
        return _json(result)["memory"]["activation_peak_bytes"]

    small, large = activation(512), activation(1024)
    # the sampler sees 8 rows either way; the forward's peak is linear in the tokens T at these sizes.
    # tests/test_profile_runner.py counts it by hand: 4T + 8T + 2*32T + 4*128T + 3*256T = 1356 bytes a token;
    # the session makes the token ids (8T) and positions (4T) before the run, as vLLM's runner holds them in
    # persistent buffers allocated before its profile run, so they are not in the increase: 1344 a token
    assert large - small == 512 * (1356 - 8 - 4)


@pytest.mark.parametrize("name", ["qwen2", "gemma3", "deepseek_v2", "mixtral"])
def test_cpu_end_to_end_on_real_architectures(name, tmp_path):
    """GQA, sliding window + multimodal wrapper, MLA + MoE, MoE: auto and dummy loads agree; JSON is valid."""
    directory, _ = save_tiny_checkpoint(name, tmp_path / name)
    # floating tensors at the model dtype (bf16), as vLLM holds them: transformers >= 5 saves DeepSeek's
    # router gate in float32
    checkpoint = sum(safetensors_tensor_bytes(directory, float_bytes=2).values())
    documents = {}
    for load_format in ("auto", "dummy"):
        result = _run([str(directory), "--device", "cpu", "--load-format", load_format, "--gpu-memory", "24GiB",
                       *SMALL_BATCH, "--json"])
        assert result.exit_code == 0, result.output
        documents[load_format] = _json(result)
    memory = documents["auto"]["memory"]
    weights = memory["weights_bytes"]
    # the checkpoint's tensors plus non-persistent buffers (rotary inv_freq, position ids: < 1 KiB here),
    # plus vLLM's rotary caches (computed: a sub-line of its own)
    measured = weights - memory["weights_vllm_buffers_bytes"]
    assert checkpoint <= measured < checkpoint + 1024
    assert memory["weights_vllm_buffers_method"] == "computed"
    assert memory["weights_vllm_buffers"]["rotary cos/sin cache"] == memory["weights_vllm_buffers_bytes"] > 0
    # the image model (its encoder profiled as vLLM does) carries the known error bound of docs/fidelity.md
    assert any(w.startswith("image model:") for w in documents["auto"]["warnings"]) == (name == "gemma3")
    assert documents["dummy"]["memory"]["weights_bytes"] == weights
    assert documents["auto"]["memory"]["activation_peak_bytes"] > 0
    assert documents["auto"]["advice"]["fit"]["tokens"] > 0
    assert documents["auto"]["kv_cache"] is not None


def test_readme_demo_runs():
    """The Makefile's `demo` recipe, read from the Makefile so this test cannot drift from it (with a
    smaller batch, to keep the suite fast)."""
    import shlex

    makefile = (EXAMPLE.parent.parent / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].splitlines()[1].strip()
    words = shlex.split(recipe)
    assert words[0].endswith("kvadvise") and words[1] == "profile" and words[2] == "examples/tiny-llama"
    result = _run([str(EXAMPLE), *words[3:], *SMALL_BATCH])
    assert result.exit_code == 0, result.output
    for text in ("weights", "peak activation", "non-torch", "CUDA graphs", "--kv-cache-memory-bytes",
                 "vllm serve"):
        assert text in result.stdout


def test_gpu_from_catalog_sets_total_and_vllm_defaults(tiny_llama):
    from kvadvise.gpus import lookup_gpu

    card = lookup_gpu("A100-80GB")
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu", "A100-80GB", "--json",
                   "--max-num-seqs", "8", "--vllm-version", "0.11"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    assert document["device"]["total_bytes"] == card.total_bytes
    assert document["device"]["source"] == "catalog"
    # vLLM 0.11: an A100 stays on the small default (2048 tokens) even with >= 70 GiB
    assert document["settings"]["max_num_batched_tokens"] == 2048


def test_tensor_and_pipeline_parallel_rank_is_shape_equivalent(tiny_llama):
    result = _run([str(tiny_llama), "--device", "cpu", "--gpu-memory", "24GiB", "--tensor-parallel-size", "2",
                   "--partition", "1,1", "--stage", "1", *SMALL_BATCH, "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    note = document["measurement"]["shape_equivalent"]
    assert "shape-equivalent" in note and "collective" in note
    assert any("dummy weights" in w for w in document["warnings"])
    # by hand, stage 1 of 2 at TP 2 (heads 4 -> 2, kv heads 2 -> 1, intermediate 128 -> 64, vocabulary 512
    # -> 256 per rank): layer 1 only: q 64x32 + k 64x16 + v 64x16 + o 32x64 + MLP 3 x 64x64 + 2 norms x 64
    # = 18,560 params = 37,120 B; final norm 128 B; lm_head 256 x 64 x 2 B = 32,768 B (no embedding on this
    # stage); rotary buffers 64 B -> 70,080 B measured; + vLLM's rotary cache (this stage holds a decoder
    # layer): 131072 x 16 x 2 B; the 256-row shard already is vLLM's padded share (512 / 2)
    assert document["memory"]["weights_bytes"] == 70_080 + 131072 * 16 * 2
    # KV: 1 layer x 2 (K, V) x 1 kv head x 16 x 2 B = 64 B per token
    assert document["kv_cache"]["bytes_per_token"] == 64
    assert document["settings"]["partition"] == [1, 1] and document["settings"]["stage"] == 1
    command = document["advice"]["fit"]["command"]
    assert command.startswith("VLLM_PP_LAYER_PARTITION=1,1 vllm serve")
    assert "--tensor-parallel-size 2" in command and "--pipeline-parallel-size 2" in command
    assert document["kv_cache"]["kv_heads_per_rank"] == 1


def test_does_not_fit_prints_report_and_exits_2():
    result = _run([str(EXAMPLE), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "200MiB",
                   *SMALL_BATCH, "--json"])
    assert result.exit_code == 2
    document = _json(result)
    assert document["status"] == "does_not_fit"
    short = -document["advice"]["fit"]["kv_cache_memory_bytes"]
    assert f"error: does not fit: short by {short / GIB:.2f} GiB" in result.stderr
    assert "hint:" in result.stderr and "fp8" in result.stderr
    assert document["advice"]["fit"]["command"] is None


def test_gate_on_tokens_exits_4(tiny_llama):
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "1GiB",
                   *SMALL_BATCH, "--json", "--min-tokens", "10000000"])
    assert result.exit_code == 4
    document = _json(result)
    assert document["gates"][0]["name"] == "min_tokens" and document["gates"][0]["passed"] is False


def test_gpu_free_sets_free_at_start_and_full(tiny_llama):
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "24GiB",
                   "--gpu-free", "23GiB", "--vllm-version", "0.11", *SMALL_BATCH, "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    assert document["device"]["free_bytes_at_start"] == 23 * GIB
    non_kv = document["memory"]["non_kv_bytes"]
    assert document["advice"]["full"]["kv_cache_memory_bytes"] == 23 * GIB - non_kv - 150 * MIB
    assert not any("--gpu-free not given" in w for w in document["warnings"])


def test_output_file(tiny_llama, tmp_path):
    target = tmp_path / "profile.json"
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "24GiB",
                   *SMALL_BATCH, "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert validate(json.loads(target.read_text()), "profile") == []


def test_no_cuda_is_exit_3_with_both_ways_forward():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run([str(EXAMPLE), "--load-format", "dummy"])
    assert result.exit_code == 3
    assert "error: no CUDA device" in result.stderr
    assert "kvadvise estimate" in result.stderr and "--device cpu" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--util", "1.5"], "--util"),
    (["--device", "tpu"], "--device"),
    (["--partition", "2,2"], "--stage"),
    (["--partition", "1,2", "--stage", "0"], "sums to 3"),
    (["--stage", "1"], "--partition"),
    (["--load-format", "pt"], "--load-format"),
    (["--vllm-version", "0.1"], "--vllm-version"),
    (["--gpu-memory", "lots"], "--gpu-memory"),
    (["--gpu-free", "25GiB"], "--gpu-free"),
])
def test_bad_input_is_one_error_line_exit_2(args, message):
    extra = [] if "--device" in args else ["--device", "cpu"]
    extra += [] if "--gpu-memory" in args else ["--gpu-memory", "24GiB"]
    extra += [] if "--load-format" in args else ["--load-format", "dummy"]
    result = _run([str(EXAMPLE), *extra, *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_mode_refuses_a_model_larger_than_host_memory(monkeypatch):
    from kvadvise.profile import device as devices

    # the example's weights are 73,273,984 B (sized on "meta" before anything is allocated)
    monkeypatch.setattr(devices, "host_memory_bytes", lambda: (50 * MIB, 64 * MIB))
    result = _run([str(EXAMPLE), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "24GiB"])
    assert result.exit_code == 3
    assert "error: the weights alone need 0.07 GiB but the host has 0.05 GiB available" in result.stderr
    assert "kvadvise estimate" in result.stderr


def test_a_config_without_weights_needs_dummy_load():
    for model in (EXAMPLE / "config.json", EXAMPLE):
        result = _run([str(model), "--device", "cpu", "--gpu-memory", "24GiB"])
        assert result.exit_code == 2 and "--load-format dummy" in result.stderr
        assert "initialising" not in result.stderr     # refused before touching the device


def test_gpu_options_need_cpu_mode():
    result = _run([str(EXAMPLE), "--device", "cuda", "--load-format", "dummy", "--gpu-memory", "24GiB"])
    assert result.exit_code == 2 and "--device cpu" in result.stderr


# ---- the CUDA path's failure: out of memory in a phase -> exit 3 with the figures so far in the JSON ----

def test_out_of_memory_exit_3_with_partial_json(capsys):
    import typer

    from kvadvise.commands._common import execute
    from kvadvise.commands.profile import run_profile_command

    fake = FakeCudaDevice(80 * GIB)
    fake.fail_on_tag = "graph"
    options = dict(model=str(EXAMPLE), util=0.9, device="cuda", load_format="dummy", dtype="auto",
                   trust_remote_code=False, revision=None, max_num_batched_tokens=2048, max_num_seqs=256,
                   max_model_len=None, kv_cache_dtype="auto", block_size=None, enforce_eager=False,
                   cuda_graph_sizes="4,2,1", tensor_parallel_size=1, partition=None, stage=None, gpu=None,
                   gpu_memory=None, gpu_free=None, vllm_version="0.11")
    with pytest.raises(typer.Exit) as caught:
        execute(lambda: run_profile_command(options, device=fake, workload=ScriptedWorkload(fake)), json_mode=True)
    assert caught.value.exit_code == 3
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert validate(document, "profile") == []
    assert document["status"] == "out_of_memory" and document["advice"] is None
    assert document["measurement"]["failed_phase"] == "cuda_graphs"
    assert document["memory"]["weights_bytes"] == GIB + 100 * MIB + 1024
    assert document["memory"]["activation_peak_bytes"] == 500 * MIB
    assert document["memory"]["non_torch_bytes"] == 64 * MIB
    assert document["memory"]["cuda_graph_bytes"] is None
    assert "error: out of device memory during the CUDA graph capture phase" in captured.err
    assert "hint: " in captured.err and "--enforce-eager" in captured.err
    assert fake.allocated == 0 and fake.reserved == 0


def test_cpu_enforce_eager_has_no_graphs_and_a_hopper_non_torch_default(tiny_llama):
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu", "H100", "--enforce-eager",
                   *SMALL_BATCH, "--json"])
    assert result.exit_code == 0, result.output
    memory = _json(result)["memory"]
    assert (memory["cuda_graph_bytes"], memory["cuda_graph_method"]) == (0, "not_applicable")
    # estimate's family default: hopper 0.16 GiB (kvadvise/estimate/graphs.py, from an H100 log)
    assert (memory["non_torch_bytes"], memory["non_torch_method"]) == (16 * GIB // 100 + TINY_RUNNER_STATE,
                                                                       "estimated")


def test_profile_and_estimate_declare_their_shared_options_once():
    """kvadvise/commands/_budget_options.py: the same flag names, defaults and help in both commands."""
    from typer.main import get_command

    commands = get_command(app).commands
    params = {name: {p.name: p for p in commands[name].params} for name in ("profile", "estimate")}
    shared = ("model", "util", "dtype", "partition", "max_model_len", "kv_cache_dtype", "block_size", "enforce_eager",
              "cuda_graph_sizes")
    for name in shared:
        a, b = params["profile"][name], params["estimate"][name]
        assert (a.opts, a.secondary_opts, a.default, getattr(a, "help", None)) == \
            (b.opts, b.secondary_opts, b.default, getattr(b, "help", None)), name
    for name in ("tensor_parallel_size", "stage", "gpu", "gpu_memory", "gpu_free", "vllm_version",
                 "max_num_batched_tokens", "max_num_seqs"):
        assert params["profile"][name].opts == params["estimate"][name].opts, name
        assert params["profile"][name].default == params["estimate"][name].default, name


def test_more_sequences_than_batched_tokens_is_refused_before_loading(tiny_llama):
    # vLLM config/scheduler.py SchedulerConfig._verify_args refuses max_num_batched_tokens < max_num_seqs
    result = _run([str(tiny_llama), "--device", "cpu", "--load-format", "dummy", "--gpu-memory", "24GiB",
                   "--max-num-batched-tokens", "64", "--max-num-seqs", "65"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "64" in error[0] and "65" in error[0], result.stderr
    assert "max_num_batched_tokens < max_num_seqs" in error[0] and "Traceback" not in result.output


def test_mla_on_a_blackwell_target_gets_the_cutlass_block(tmp_path):
    from tests.tiny_models import tiny_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_config("deepseek_v2")))
    result = _run([str(tmp_path), "--device", "cpu", "--load-format", "dummy", "--gpu", "b200", *SMALL_BATCH,
                   "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    # tiny DeepSeek-V2 latent: kv_lora_rank 16 + qk_rope_head_dim 8, bf16, 128 tokens a block
    assert document["settings"]["block_size"] == 128
    assert document["kv_cache"]["page_size_bytes"] == 128 * 24 * 2
    assert any("CUTLASS MLA" in warning for warning in document["warnings"])
