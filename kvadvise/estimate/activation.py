"""Peak activation without memory: the runner's own dummy run (kvadvise/profile/runner.py) under torch's
FakeTensorMode, counted by the runner's LiveBytesTracker (kvadvise/profile/tracker.py).

Same model build (kvadvise/profile/build.py build_model, dummy weights, on a fake "cpu" device), same
plan (kvadvise/plan/dummy.py), same forward and sampler as `kvadvise profile --device cpu`; only the
tensors are fake, so a 671B model costs what a 1B one does.

Shortcut for big models (`representative_layers`): in inference (no gradients, no KV cache) each decoder
layer's temporaries die before the next layer runs, so the peak is the cross-layer tensors (hidden
states, residual, rotary cos/sin, inputs) plus the largest single layer's temporaries. Layers with the
same structure (module classes, parameter shapes, attention type) peak alike, so the trace keeps the first
layer of every distinct structure, in order, with the embedding, final norm, lm_head and sampler.
tests/test_estimate_activation.py proves the shortcut equal to the full trace, to the byte, on models
small enough to trace whole.

Fallback (`analytic_activation_bytes`) when the forward cannot run under fake tensors (a data-dependent
op, an unsupported architecture): a documented formula, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class ActivationEstimate:
    activation_peak_bytes: int
    method: str                      # "fake-tensor trace" or "analytic"
    traced_layers: Optional[int]     # decoder layers traced (None: analytic)
    total_layers: Optional[int]
    warnings: tuple[str, ...] = ()


def layer_signature(layer: Any) -> tuple:
    """What decides a layer's activation: module classes, parameter shapes, attention / layer type."""
    parts: list[Any] = []
    for name, module in layer.named_modules():
        parts.append((name, type(module).__name__))
    for name, tensor in layer.named_parameters():
        parts.append((name, tuple(tensor.shape), str(tensor.dtype)))
    for attribute in ("attention_type", "layer_type", "is_sliding", "sliding_window", "use_sliding"):
        value = getattr(layer, attribute, None)
        if value is None:
            attention = getattr(layer, "self_attn", None)
            value = getattr(attention, attribute, None) if attention is not None else None
        parts.append((attribute, repr(value)))
    return tuple(parts)


def representative_layers(model: Any) -> tuple[int, int]:
    """Keep layer 0 and, in order, the first layer after it of each distinct structure. (kept, total)

    Layer 0 is special: its input IS the embedding output, which the decoder's forward keeps referenced
    (transformers' `inputs_embeds`) for the whole loop; from layer 1 on, that tensor and the previous
    layer's output are both live. So every structure is traced at a position >= 1.
    """
    import torch.nn as nn

    from kvadvise.profile.build import locate_parts

    decoder = locate_parts(model).decoder
    layers = list(decoder.layers)
    if len(layers) <= 2:
        return len(layers), len(layers)
    seen: set[tuple] = set()
    kept = [layers[0]]
    for layer in layers[1:]:
        signature = layer_signature(layer)
        if signature not in seen:
            seen.add(signature)
            kept.append(layer)
    decoder.layers = nn.ModuleList(kept)
    return len(kept), len(layers)


def build_fake_model(spec: Any, *, dtype: str, shape: Any, fake_mode: Any) -> Any:
    """The rank's model (kvadvise.profile.build.build_model, dummy) with fake tensors: no memory taken."""
    from kvadvise.errors import KvadviseError
    from kvadvise.profile.build import build_model

    try:
        with fake_mode:
            return build_model(spec, load_format="dummy", dtype=dtype, device="cpu", shape=shape)
    except KvadviseError:
        raise
    except Exception as error:  # transformers cannot build this config (unknown class, remote code, ...)
        from kvadvise.errors import InputError

        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise InputError(f"cannot build {spec.model_type!r} from its config with transformers ({message})",
                         hint="models that need their own code (--trust-remote-code) cannot be estimated "
                              "offline") from None


def trace_activation(model: Any, spec: Any, plan: Any, *, shape: Any, fake_mode: Any, run_sampler: bool,
                     sampler_rule: str, cublas_workspace_bytes: int = 0) -> int:
    """Peak live bytes of the runner's dummy run minus the bytes live before it (as profile measures).

    cublas_workspace_bytes: the target card's cuBLAS workspace (kvadvise.plan.dummy), which vLLM's first
    matmul allocates inside its profile run: part of vLLM's activation peak, as in `profile --device cpu`.
    """
    from kvadvise.profile.build import model_tensors
    from kvadvise.profile.runner import dummy_run, make_dummy_inputs
    from kvadvise.profile.tracker import LiveBytesTracker

    tracker = LiveBytesTracker()
    with fake_mode:
        # the profile's CpuDevice tracks from before the load: weights and the persistent input buffers
        # are live (adopted) before the peak is reset, exactly as there
        tracker.adopt(model_tensors(model))
        with tracker:
            inputs = make_dummy_inputs(plan, model, device="cpu", sampler_rule=sampler_rule)
            before = tracker.reset_peak()
            dummy_run(model, spec, plan, device="cpu", run_sampler=run_sampler, sampler_version=sampler_rule,
                      shape=shape, inputs=inputs, cublas_workspace_bytes=cublas_workspace_bytes)
            peak = tracker.peak_bytes
            del inputs
    return peak - before


def estimate_activation(spec: Any, plan: Any, *, dtype: str, shape: Any, run_sampler: bool, sampler_rule: str,
                        model: Any = None, fake_mode: Any = None, shortcut: bool = True,
                        cublas_workspace_bytes: int = 0) -> ActivationEstimate:
    """Trace the dummy run under fake tensors (the shortcut model unless shortcut=False); analytic fallback."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_mode = fake_mode or FakeTensorMode(allow_non_fake_inputs=True)
    try:
        if model is None:
            model = build_fake_model(spec, dtype=dtype, shape=shape, fake_mode=fake_mode)
        kept, total = representative_layers(model) if shortcut else (None, None)
        peak = trace_activation(model, spec, plan, shape=shape, fake_mode=fake_mode, run_sampler=run_sampler,
                                sampler_rule=sampler_rule, cublas_workspace_bytes=cublas_workspace_bytes)
        return ActivationEstimate(peak, "fake-tensor trace", kept, total)
    except Exception as error:  # an op fake tensors cannot run (data-dependent output), an unknown layout
        bytes_ = analytic_activation_bytes(spec, plan, dtype=dtype,
                                           tensor_parallel_size=shape.tensor_parallel_size,
                                           run_sampler=run_sampler, sampler_rule=sampler_rule) + cublas_workspace_bytes
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        return ActivationEstimate(bytes_, "analytic", None, None, (
            f"the dummy run could not be traced under fake tensors ({reason}); the peak activation is the "
            "analytic estimate (docs/json/estimate.md, 'Analytic activation'), less exact than a trace",))


DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def analytic_activation_bytes(spec: Any, plan: Any, *, dtype: str, tensor_parallel_size: int = 1,
                              run_sampler: bool = True, sampler_rule: str = "0.11") -> int:
    """The documented fallback formula (per TP rank), in bytes:

    forward = T x b x (4 H + max(attention, mlp)), T = tokens, b = dtype bytes, H = hidden size;
      attention = (heads + 2 kv heads) x head size / tp x 2 (q, k, v and the output buffer, twice for
      rotary copies); mlp = 3 x intermediate / tp (gate, up, activation product) for dense layers,
      for MoE: top-k x (3 x moe intermediate / tp + H) (vLLM fused_moe caches) + experts (router logits, f32);
    sampler (the V1 runner, 0.10.2-0.12) = R x V x (b + 36) + R x H x b, R = requests, V = vocabulary: the
      peak of the mirrored vLLM 0.11 sampler (kvadvise/profile/sampler.py) per row and vocabulary entry,
      traced: the logits in the model dtype and in float32, the sorted values (float32) and indices (int64),
      the CUDA sort's workspace and the masks (tests/test_estimate_activation.py checks this against the
      traced sampler); (Model Runner V2, 0.33) = R x V x b + R x ceil(V / 1024) x 12 + 32 R: the logits and
      gumbel_sample's block buffers (sampler.v2_sampler_bytes).
    """
    b = DTYPE_BYTES.get(dtype, 2)
    tokens = plan.num_tokens
    hidden = spec.hidden_size
    tp = max(1, tensor_parallel_size)
    heads = spec.num_attention_heads
    kv_heads = spec.num_kv_heads or heads
    attention = (heads + 2 * kv_heads) * spec.head_size // tp * 2
    intermediate = spec.intermediate_size or 4 * hidden
    mlp = 3 * intermediate // tp
    if spec.num_experts:
        top_k = spec.num_experts_per_token or 1
        moe = top_k * (3 * (spec.moe_intermediate_size or intermediate) // tp + hidden)
        mlp = max(mlp, moe) + spec.num_experts * 4 // b
    forward = tokens * b * (4 * hidden + max(attention, mlp))
    sampler = 0
    if run_sampler:
        from kvadvise.profile.sampler import sampler_bytes  # plain arithmetic: no torch import

        sampler = sampler_bytes(sampler_rule, plan.sampler_rows, spec.vocab_size, hidden, b)
    return forward + sampler
