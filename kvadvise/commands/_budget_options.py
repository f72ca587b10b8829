"""The typer options `profile` and `estimate` share: one declaration of each flag name, default and help.

Where the two commands word a help text differently (the device measured vs the card estimated for),
a small factory takes the wording and keeps the flag names and the default here. No torch import: the
commands' --help must stay light.
"""

from __future__ import annotations

from typing import Optional

import typer

from kvadvise.plan.kv import DEFAULT_VLLM_VERSION, VLLM_VERSIONS  # pure arithmetic: no torch

ModelArgument = typer.Argument(..., help="Hub id (local cache), a directory with config.json, or a config file.")
UtilOption = typer.Option(0.9, "--util", "--gpu-memory-utilization", help="vLLM's --gpu-memory-utilization to advise for.")
DtypeOption = typer.Option("auto", "--dtype", help="auto, bfloat16 or float16.")
PartitionOption = typer.Option(None, "--partition", help="Pipeline layer counts, e.g. 48,16.")
MaxModelLenOption = typer.Option(None, "--max-model-len", help="Default: the model's.")
KvCacheDtypeOption = typer.Option("auto", "--kv-cache-dtype", help="auto, bfloat16, float16, fp8, ...")
BlockSizeOption = typer.Option(None, "--block-size", help="KV block size (default vLLM's).")
EnforceEagerOption = typer.Option(False, "--enforce-eager", help="No CUDA graphs (as vLLM's flag).")
CudaGraphSizesOption = typer.Option(None, "--cuda-graph-sizes",
                                    help="Largest capture size, or a comma-separated list.")


def max_num_batched_tokens_option(target: str) -> Optional[int]:
    """--max-num-batched-tokens; `target` names what vLLM's default depends on ("device", "card")."""
    return typer.Option(None, "--max-num-batched-tokens", help=f"Default: vLLM's for the {target}.")


def max_num_seqs_option(target: str) -> Optional[int]:
    return typer.Option(None, "--max-num-seqs", help=f"Default: vLLM's for the {target}.")


def tensor_parallel_size_option(help_text: str) -> int:
    return typer.Option(1, "--tensor-parallel-size", "-tp", help=help_text)


def stage_option(verb: str) -> Optional[int]:
    """--stage; `verb` is what the command does to the stage ("measure", "estimate")."""
    return typer.Option(None, "--stage", help=f"The pipeline stage to {verb} (with --partition).")


def gpu_option(help_text: str) -> Optional[str]:
    return typer.Option(None, "--gpu", help=help_text)


def gpu_memory_option(help_text: str) -> Optional[str]:
    return typer.Option(None, "--gpu-memory", help=help_text)


def gpu_free_option(help_text: str) -> Optional[str]:
    return typer.Option(None, "--gpu-free", help=help_text)


ModelRunnerOption = typer.Option(
    "auto", "--model-runner",
    help="vLLM's model runner whose profile run to mirror: auto (the version's default: v2 for 0.33, v1 before), "
         "v1 (VLLM_USE_V2_MODEL_RUNNER=0, or a feature V2 lacks such as speculative decoding), v2.")

VLLM_VERSION_HELP = f"vLLM rules to mirror: {', '.join(VLLM_VERSIONS)} (default {DEFAULT_VLLM_VERSION})."


def vllm_version_option(help_text: str = VLLM_VERSION_HELP) -> Optional[str]:
    from kvadvise.commands._common import vllm_version_callback

    return typer.Option(None, "--vllm-version", help=help_text, callback=vllm_version_callback)
