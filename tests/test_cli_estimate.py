"""`kvadvise estimate` and `kvadvise gpus` end to end: the JSON contract, estimate vs `profile --device cpu`
on the same tiny checkpoint, the advice from the profile's own code, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.gpus import CATALOG, lookup_gpu
from kvadvise.plan.advice import REDUNDANCY_BUFFER_BYTES
from kvadvise.report.schema import validate
from tests.tiny_models import save_tiny_checkpoint, tiny_config

runner = CliRunner()
CONFIGS = Path(__file__).parent / "data" / "configs"
SMALL_BATCH = ["--max-num-batched-tokens", "64", "--max-num-seqs", "8"]
GIB = 1 << 30


def _json(result, schema="estimate"):
    document = json.loads(result.stdout)
    assert validate(document, schema) == [], validate(document, schema)
    return document


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    directory, _ = save_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny-llama-estimate"))
    return directory


def test_estimate_vs_profile_on_the_host(tiny_llama):
    """Same checkpoint, same batch, same card: weights identical to the byte (profile-equivalent figure),
    activation within 5% (it is the same run, so equal), the same advice arithmetic."""
    common = [str(tiny_llama), "--gpu", "L4", *SMALL_BATCH, "--json"]
    profiled = runner.invoke(app, ["profile", "--device", "cpu", "--load-format", "auto", *common])
    assert profiled.exit_code == 0, profiled.output
    estimated = runner.invoke(app, ["estimate", *common])
    assert estimated.exit_code == 0, estimated.output
    profile_doc = _json(profiled, "profile")
    estimate_doc = _json(estimated)
    weights = estimate_doc["estimate"]["weights"]
    assert weights["source"] == "safetensors headers"
    # the HF tensors the profile measures (parameters + inv_freq) ...
    assert weights["profile_equivalent_bytes"] == 213_696
    # ... + vLLM's rotary cache (131072 positions x 16 x 2 B) from the one source both use: equal to the byte
    assert estimate_doc["memory"]["weights_bytes"] == profile_doc["memory"]["weights_bytes"] == 213_696 + 131072 * 16 * 2
    for document in (profile_doc, estimate_doc):
        assert document["memory"]["weights_vllm_buffers"] == {"rotary cos/sin cache": 131072 * 16 * 2}
        assert document["memory"]["weights_vllm_buffers_method"] == "computed"
    # the same dummy run (with the L4's cuBLAS workspace, compute capability 8.9: 8,519,680 B): equal to the byte
    assert estimate_doc["estimate"]["activation"]["cublas_workspace_bytes"] == 8_519_680
    assert estimate_doc["memory"]["activation_peak_bytes"] == profile_doc["memory"]["activation_peak_bytes"]
    # on the host, profile takes non-torch and CUDA-graph memory from estimate's code: the same figures
    for term in ("non_torch", "cuda_graph"):
        assert profile_doc["memory"][f"{term}_method"] == "estimated"
        assert profile_doc["memory"][f"{term}_bytes"] == estimate_doc["memory"][f"{term}_bytes"]
    for term in ("weights", "activation_peak", "non_torch", "cuda_graph"):
        assert estimate_doc["memory"][f"{term}_method"] == "estimated"
    card = lookup_gpu("L4")
    assert estimate_doc["device"]["total_bytes"] == estimate_doc["device"]["free_bytes_at_start"] == card.total_bytes
    memory, advice = estimate_doc["memory"], estimate_doc["advice"]
    non_kv = sum(memory[f"{t}_bytes"] for t in ("weights", "activation_peak", "non_torch", "cuda_graph"))
    assert advice["non_kv_bytes"] == non_kv
    # vLLM 0.33's requested memory is math.ceil(total x util)
    import math

    assert advice["fit"]["kv_cache_memory_bytes"] == math.ceil(card.total_bytes * 0.9) - non_kv - REDUNDANCY_BUFFER_BYTES
    assert advice["full"]["kv_cache_memory_bytes"] == card.total_bytes - non_kv - REDUNDANCY_BUFFER_BYTES
    assert f"--kv-cache-memory-bytes {advice['fit']['kv_cache_memory_bytes']}" in advice["fit"]["command"]
    assert advice["fit"]["tokens"] > 0 and estimate_doc["kv_cache"] is not None


def test_real_config_default_batch_and_family_defaults():
    result = runner.invoke(app, ["estimate", str(CONFIGS / "meta-llama__Llama-3.2-1B.json"), "--gpu", "h100",
                                 "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    # vLLM's defaults on an 80 GB non-A100 card (kvadvise.plan.dummy): 8192 tokens, 1024 sequences
    assert (document["settings"]["max_num_batched_tokens"], document["settings"]["max_num_seqs"]) == (8192, 1024)
    # the hopper non-torch default: 0.16 GiB from an H100 log (case12), plus vLLM 0.33's Model Runner V2
    # state by hand (R 1024 sequences, T 8192 tokens, V 128256, ceil(V / 32) = 4008 words, int32 unless said):
    # bin counts R x V, prompt mask and grammar bitmask R x 4008 each, three logit-bias tables and the bad-word
    # ids R x 1024 each, stop ids and logprob ids R x 128, bad-word offsets R x 129, structured indices R;
    # request state 2 R + R int64 + R; inputs T x (4 + 8 + 1), R + 1, 2 R
    r, t, v = 1024, 8192, 128256
    sampler = 4 * (r * v + 2 * r * 4008 + 4 * r * 1024 + 2 * r * 128 + r * 129 + r)
    inputs = 4 * 2 * r + 8 * r + 4 * r + 13 * t + 4 * (r + 1) + 4 * 2 * r
    assert document["memory"]["non_torch_vllm_buffers"] == {"Model Runner V2 sampler state": sampler,
                                                            "Model Runner V2 request and input buffers": inputs}
    assert document["memory"]["non_torch_bytes"] == 16 * GIB // 100 + sampler + inputs
    graphs = document["estimate"]["cuda_graphs"]
    assert document["memory"]["cuda_graph_bytes"] == graphs["pool_bytes"] + graphs["num_sizes"] * graphs["bytes_per_size"]
    assert document["estimate"]["activation"]["traced_layers"] == 2


def test_a100_keeps_the_small_default_batch():
    result = runner.invoke(app, ["estimate", str(CONFIGS / "meta-llama__Llama-3.2-1B.json"), "--gpu", "a100-80gb",
                                 "--enforce-eager", "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    assert (document["settings"]["max_num_batched_tokens"], document["settings"]["max_num_seqs"]) == (2048, 256)
    assert document["memory"]["cuda_graph_bytes"] == 0
    assert document["memory"]["cuda_graph_method"] == "not_applicable"


def test_given_non_torch_memory_and_gpu_memory_and_free(tiny_llama):
    result = runner.invoke(app, ["estimate", str(tiny_llama), "--gpu-memory", "24GiB", "--gpu-free", "20GiB",
                                 "--non-torch-memory", "1GiB", *SMALL_BATCH, "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    assert document["memory"]["non_torch_bytes"] == GIB
    assert document["memory"]["non_torch_method"] == "given"
    assert document["device"]["total_bytes"] == 24 * GIB
    assert document["device"]["free_bytes_at_start"] == 20 * GIB
    non_kv = document["advice"]["non_kv_bytes"]
    assert document["advice"]["full"]["kv_cache_memory_bytes"] == 20 * GIB - non_kv - REDUNDANCY_BUFFER_BYTES
    # 20 of 24 GiB free: vLLM's start-up gate passes up to 0.83
    assert document["advice"]["gpu_memory_utilization_for_gate"] == 0.83


def test_model_too_big_prints_the_report_and_exits_2():
    result = runner.invoke(app, ["estimate", str(CONFIGS / "meta-llama__Llama-3.1-70B.json"), "--gpu", "rtx4090",
                                 "--json"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert validate(document, "estimate") == []
    assert document["status"] == "does_not_fit"
    short = -document["advice"]["fit"]["kv_cache_memory_bytes"]
    assert short > 100 * GIB                   # 70B bf16 weights alone are ~131 GiB
    assert "does not fit: short by" in result.stderr and str(short) in result.stderr


def test_tensor_parallel_rank(tiny_llama):
    one = _json(runner.invoke(app, ["estimate", str(tiny_llama), "--gpu", "l40s", *SMALL_BATCH, "--json"]))
    two = _json(runner.invoke(app, ["estimate", str(tiny_llama), "--gpu", "l40s", "-tp", "2", *SMALL_BATCH,
                                    "--json"]))
    assert two["estimate"]["weights"]["parameter_bytes"] < one["estimate"]["weights"]["parameter_bytes"]
    # TP 2 on a datacenter card adds the collective-buffer default (case04 H200: 1.38 - 0.16 GiB)
    assert two["memory"]["non_torch_bytes"] == one["memory"]["non_torch_bytes"] + 138 * GIB // 100 - 16 * GIB // 100
    assert two["estimate"]["shape_equivalent"]


def test_unknown_gpu_lists_close_names(tiny_llama):
    result = runner.invoke(app, ["estimate", str(tiny_llama), "--gpu", "rtx 4080"])
    assert result.exit_code == 2
    assert "unknown GPU 'rtx 4080'" in result.stderr and "RTX-4090" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    ([], "--gpu NAME or --gpu-memory SIZE"),
    (["--gpu-memory", "24GiB", "--gpu-free", "30GiB"], "exceeds the card's total"),
    (["--gpu", "h100", "--util", "1.5"], "--util"),
    (["--gpu", "h100", "--stage", "1"], "--stage needs --partition"),
    (["--gpu", "h100", "--block-size", "24"], "--block-size must be one of 1, 8, 16, 32, 64, 128, 256"),
    (["--gpu", "h100", "--min-concurrency", "nan"], "--min-concurrency must be a finite number"),
])
def test_bad_input_exits_2(tiny_llama, args, message):
    result = runner.invoke(app, ["estimate", str(tiny_llama), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_gpus_command_lists_the_catalog():
    result = runner.invoke(app, ["gpus", "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result, "gpus")
    assert [entry["key"] for entry in document["catalog"]] == [spec.key for spec in CATALOG]
    h100 = next(entry for entry in document["catalog"] if entry["key"] == "H100-80GB-SXM")
    assert h100["total_bytes"] == lookup_gpu("h100").total_bytes
    text = runner.invoke(app, ["gpus"])
    assert text.exit_code == 0 and "H100-80GB-SXM" in text.stdout


def test_gpus_local_cards_through_nvml_stand_in():
    from types import SimpleNamespace

    from kvadvise.report.gpus import local_devices

    class FakeNvml:
        def nvmlInit(self):
            pass

        def nvmlShutdown(self):
            pass

        def nvmlDeviceGetHandleByIndex(self, index):
            if index > 0:
                raise RuntimeError("no such device")
            return "handle0"

        def nvmlDeviceGetName(self, handle):
            return b"NVIDIA H100 80GB HBM3"

        def nvmlSystemGetDriverVersion(self):
            return "550.54"

        def nvmlDeviceGetMigMode(self, handle):
            return (0, 0)

        def nvmlDeviceGetMemoryInfo(self, handle):
            return SimpleNamespace(total=85520809984, free=84000000000)

        def nvmlDeviceGetComputeRunningProcesses(self, handle):
            return []

        def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
            return []

    devices, _ = local_devices(FakeNvml())
    assert devices == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_bytes": 85520809984,
                        "free_bytes": 84000000000, "catalog_key": "H100-80GB-SXM"}]


def test_partial_checkpoint_falls_back_to_the_config(tmp_path):
    from kvadvise.estimate.engine import checkpoint_dir
    from kvadvise.model.spec import load_model_spec

    directory, _ = save_tiny_checkpoint("llama", tmp_path / "partial")
    spec = load_model_spec(str(directory))
    warnings: list[str] = []
    assert checkpoint_dir(spec, warnings) == directory and warnings == []
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert checkpoint_dir(spec, warnings) is None
    assert "lacks 1 of its 2 safetensors shards" in warnings[0]


def test_mxfp4_model_on_two_ranks():
    # gpt-oss's pad_token_id (199999) lies outside a TP rank's shrunk vocabulary (100544 rows): the estimate
    # must still build the rank (the pad id holds no memory)
    result = runner.invoke(app, ["estimate", str(CONFIGS / "openai__gpt-oss-20b.json"), "--gpu", "h100", "-tp", "2",
                                 "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    assert document["estimate"]["weights"]["quantization"] == "mxfp4"
    assert document["estimate"]["weights"]["quantization_scale_bytes"] > 0
    assert document["estimate"]["activation"]["method"] == "fake-tensor trace"


def test_budget_too_small_for_one_request_caps_max_model_len():
    """Llama-3.1-8B on an L4: 'fit' holds fewer tokens than one 131,072-token request. vLLM would refuse to
    start with the model's length, so the serve line carries the longest length that fits, and says why."""
    result = runner.invoke(app, ["estimate", str(CONFIGS / "meta-llama__Llama-3.1-8B.json"), "--gpu", "L4",
                                 "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    fit = document["advice"]["fit"]
    # by hand: full attention, 32 layers x 2 (K, V) x 8 kv heads x 128 x 2 bytes x 16 tokens = 2 MiB a block
    blocks = fit["kv_cache_memory_bytes"] // (2 * 32 * 8 * 128 * 2 * 16)
    assert blocks * 16 < 131072
    assert f"--max-model-len {blocks * 16} " in fit["command"]
    assert any(w.startswith("fit: one request of 131072 tokens does not fit") for w in document["warnings"])
    # a config file is not something vLLM serves: the line names the placeholder and a warning says so
    assert fit["command"].startswith("vllm serve MODEL ")
    assert any("is a config file, which vLLM cannot serve" in w for w in document["warnings"])


def test_model_caveats_are_warnings():
    # gpt-oss names no dtype: the assumption changes the numbers, so it is a warning, not only a model note
    result = runner.invoke(app, ["estimate", str(CONFIGS / "openai__gpt-oss-20b.json"), "--gpu", "H100", "--json"])
    assert result.exit_code == 0, result.output
    assert any(w.startswith("no dtype in the config") for w in _json(result)["warnings"])


def test_config_file_is_served_as_a_placeholder_even_when_it_names_a_hub_id():
    # the GPTQ upload's config names its fp16 source (budecosystem/genz-70b): serving that would load another
    # model, four times the size of the one the budget is for
    result = runner.invoke(app, ["estimate", str(CONFIGS / "TheBloke__Genz-70b-GPTQ.json"), "--gpu", "A100-80GB",
                                 "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    assert document["advice"]["fit"]["command"].startswith("vllm serve MODEL ")
    assert any("_name_or_path says budecosystem/genz-70b" in w for w in document["warnings"])


def _config_dir(tmp_path, config: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_max_num_seqs_above_batched_tokens_is_refused(tiny_llama):
    # vLLM config/scheduler.py SchedulerConfig._verify_args: max_num_batched_tokens >= max_num_seqs, with or
    # without chunked prefill. H100 default 8192 tokens against 100000 sequences (the reviewer's case):
    result = runner.invoke(app, ["estimate", str(CONFIGS / "meta-llama__Llama-3.2-1B.json"), "--gpu", "h100",
                                 "--max-num-seqs", "100000"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "8192" in error[0] and "100000" in error[0]
    assert "max_num_batched_tokens < max_num_seqs" in error[0] and "Traceback" not in result.output
    # one more sequence than tokens is refused, as many is accepted
    assert runner.invoke(app, ["estimate", str(tiny_llama), "--gpu", "l40s", "--max-num-batched-tokens", "64",
                               "--max-num-seqs", "65"]).exit_code == 2
    assert runner.invoke(app, ["estimate", str(tiny_llama), "--gpu", "l40s", "--max-num-batched-tokens", "64",
                               "--max-num-seqs", "64", "--json"]).exit_code == 0


def test_mla_block_is_128_on_blackwell_unless_given(tmp_path):
    # tiny DeepSeek-V2 (MLA: kv_lora_rank 16 + qk_rope_head_dim 8 = 24 latent entries a token, bf16)
    model = _config_dir(tmp_path / "tiny-mla", tiny_config("deepseek_v2"))
    blackwell = _json(runner.invoke(app, ["estimate", str(model), "--gpu", "b200", *SMALL_BATCH, "--json"]))
    assert blackwell["settings"]["block_size"] == 128
    assert blackwell["kv_cache"]["page_size_bytes"] == 128 * 24 * 2
    assert any("CUTLASS MLA" in w and "128" in w for w in blackwell["warnings"])
    assert "--block-size 128" in blackwell["advice"]["fit"]["command"]
    hopper = _json(runner.invoke(app, ["estimate", str(model), "--gpu", "h200", *SMALL_BATCH, "--json"]))
    assert hopper["kv_cache"]["page_size_bytes"] == 64 * 24 * 2
    assert not any("CUTLASS MLA, vLLM's default" in w for w in hopper["warnings"])
    given = _json(runner.invoke(app, ["estimate", str(model), "--gpu", "b200", "--block-size", "64", *SMALL_BATCH,
                                      "--json"]))
    assert given["kv_cache"]["page_size_bytes"] == 64 * 24 * 2
    assert not any("CUTLASS MLA, vLLM's default" in w for w in given["warnings"])
    # not MLA: the block stays 16 on Blackwell
    llama = _json(runner.invoke(app, ["estimate", str(_config_dir(tmp_path / "tiny-llama", tiny_config("llama"))),
                                      "--gpu", "b200", *SMALL_BATCH, "--json"]))
    assert llama["settings"]["block_size"] == 16


def test_no_kernel_install_hints_on_stderr(tmp_path):
    # transformers' Mamba2 path logs "`causal_conv1d_fn` is falling back ... install `causal_conv1d`" (once per
    # process): a fresh process shows what a user sees
    import subprocess
    import sys

    model = _config_dir(tmp_path / "tiny-nemotron-h", tiny_config("nemotron_h", layers=3))
    done = subprocess.run([sys.executable, "-m", "kvadvise.cli", "estimate", str(model), "--gpu", "h100",
                           *SMALL_BATCH, "--json"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["command"] == "estimate"
    assert "causal_conv1d" not in done.stderr and "install" not in done.stderr.lower(), done.stderr


def test_model_runner_chooses_the_dummy_sampler_mirrored():
    """vLLM 0.33 profiles with Model Runner V2 (auto); --model-runner v1 counts the V1 runner's sampler as its
    upper bound (0.11's), and the difference is the two samplers' shares by hand (Qwen3-8B: 256 rows x 151936,
    bf16, hidden 4096); v2 before 0.33 and unknown runners are bad input."""
    from kvadvise.profile.sampler import v1_sampler_bytes, v2_sampler_bytes

    config = str(CONFIGS / "Qwen__Qwen3-8B.json")
    common = [config, "--gpu", "rtx4090", "--max-num-batched-tokens", "256", "--max-num-seqs", "256", "--json"]
    documents = {}
    for runner_name in ("auto", "v2", "v1"):
        result = runner.invoke(app, ["estimate", *common, "--model-runner", runner_name])
        assert result.exit_code == 0, result.output
        documents[runner_name] = _json(result)
    assert documents["auto"]["settings"]["model_runner"] == documents["v2"]["settings"]["model_runner"] == "v2"
    assert documents["v1"]["settings"]["model_runner"] == "v1"
    auto, v1 = (documents[k]["memory"]["activation_peak_bytes"] for k in ("auto", "v1"))
    assert auto == documents["v2"]["memory"]["activation_peak_bytes"]
    # with 256 tokens the sampler sets both peaks: they differ by the samplers' shares (allocator rounding aside)
    by_hand = v1_sampler_bytes(256, 151936, 4096, 2) - v2_sampler_bytes(256, 151936, 2)
    assert abs((v1 - auto) - by_hand) < 64 * 1024, (v1 - auto, by_hand)
    slack = 256 * 151936 * (36 - 12)     # 0.11's 36 bytes an entry against the 12 of the tensors 0.33's V1 path makes
    assert any("upper bound" in w and f"up to {slack} bytes" in w for w in documents["v1"]["warnings"])
    assert any("Model Runner V2" in w and "--model-runner v1" in w for w in documents["auto"]["warnings"])
    v1_012 = runner.invoke(app, ["estimate", *common, "--vllm-version", "0.12", "--model-runner", "v1"])
    assert _json(v1_012)["memory"]["activation_peak_bytes"] == v1
    assert not any("sampler" in w for w in _json(v1_012)["warnings"])
    for bad in (["--vllm-version", "0.12", "--model-runner", "v2"], ["--model-runner", "v3"]):
        result = runner.invoke(app, ["estimate", *common, *bad])
        assert result.exit_code == 2, result.output
        assert "--model-runner" in result.stderr and "Traceback" not in result.output


def test_model_runner_v2_start_up_log_whole_budget():
    """vLLM 0.27.1 (Model Runner V2, the runner 0.33 rules mirror), Qwen3-8B, a 23.52 GiB card with 22.64 free,
    util 0.92 (alexostapiuk11/coldstart-recon-worker fixtures/vllm_logs/startup_1.log, tests/data/
    activation_cases.json v0271-qwen3-8b): vLLM suggests 5587232994 to fit and 6663106048 to fill the card.
    The estimate from the config alone, term by term against the log (GiB, the errors docs/fidelity.md
    reports): consumed 15.54 (weights + non-torch with the Model Runner V2 state) -0.04, peak activation 0.19
    +0.02, graphs 0.56 -0.01; both suggestions +0.02 (above vLLM's, inside its 150 MiB buffer)."""
    result = runner.invoke(app, ["estimate", str(CONFIGS / "Qwen__Qwen3-8B.json"), "--gpu", "rtx4090",
                                 "--gpu-memory", "23.52GiB", "--gpu-free", "22.64GiB", "--util", "0.92",
                                 "--max-model-len", "8192", "--json"])
    assert result.exit_code == 0, result.output
    document = _json(result)
    memory, advice = document["memory"], document["advice"]
    assert (document["settings"]["max_num_batched_tokens"], document["settings"]["max_num_seqs"]) == (2048, 256)

    def error(ours: int, logged_gib: float) -> float:
        return round(ours / GIB - logged_gib, 2)

    assert error(memory["weights_bytes"] + memory["non_torch_bytes"], 15.54) == -0.04
    assert error(memory["activation_peak_bytes"], 0.19) == 0.02
    assert error(memory["cuda_graph_bytes"], 0.56) == -0.01
    assert error(advice["fit"]["kv_cache_memory_bytes"], 5587232994 / GIB) == 0.02
    assert error(advice["full"]["kv_cache_memory_bytes"], 6663106048 / GIB) == 0.02
    # without Model Runner V2's state the consumed memory would be 0.19 GiB low
    assert round(memory["non_torch_vllm_buffers_bytes"] / GIB, 2) == 0.16
