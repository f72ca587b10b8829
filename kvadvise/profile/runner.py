"""vLLM's profile run with Hugging Face modules: one max-batch forward without KV cache, then the sampler.

Mirrors vLLM 0.11 v1/worker/gpu_model_runner.py `profile_run` / `_dummy_run` / `_dummy_sampler_run`:
- the batch is one flat sequence of `plan.num_tokens` tokens (int32 ids, int64 positions restarting at 0
  for every request), no KV cache (`use_cache=False`);
- attention metadata is None in vLLM's profile run, so its attention kernels return early: the layer
  allocates its output buffer (num_tokens x heads x head_size_v) and computes nothing. We register the
  same behaviour as a transformers attention function ("kvadvise_profile"): no score matrix, no mask;
- MoE experts allocate what vLLM 0.11's fused_moe (model_executor/layers/fused_moe/fused_moe.py
  fused_experts_impl, Triton path) allocates: cache13 (M x topk x max(N, K)), cache2 (M*topk x N/2), the
  output, and moe_align_block_size's index tensors, M = min(tokens, VLLM_FUSED_MOE_CHUNK_SIZE); no expert
  loop, so the figure does not depend on the routing of dummy weights and runs under FakeTensorMode;
- the full hidden states stay alive while the sampler runs on each request's last-token hidden state;
  logits are `lm_head(rand_like(h))` in the model dtype (vLLM compute_logits), softcapped if the config
  says so, all-gathered over the vocabulary on a TP rank; the sampler is kvadvise/profile/sampler.py.
- off the first pipeline stage, vLLM's intermediate tensors (hidden states and residual, each
  max_num_tokens x hidden) are allocated during the run and are the stage's input;
- image models with a fixed token count per image (Gemma 3) first run the encoder on the largest dummy
  image batch and keep its inputs and outputs alive through the rest of the run, as vLLM's profile_run;
- on CPU and fake tensors, placeholders stand for allocations a CUDA process makes inside kernels: the
  CUDA sort's workspace (sampler.py) and, when asked, the cuBLAS workspace of the first matmul.

What differs from vLLM (the modules are transformers', not vLLM's): unfused q/k/v and gate/up
projections, RMSNorm in float32 and a separate residual add (vLLM fuses both), transformers' rotary
cos/sin per forward (vLLM indexes a cached table), the MoE router's float32 softmax, and the decoder's
forward keeping the embedding output referenced for the whole loop (transformers' `inputs_embeds`).
Kernels' own workspaces are invisible to the live-bytes tracker but seen by a CUDA measurement; the
CUDA sort's in the sampler is emulated on CPU and fake tensors (sampler.py), torch's cuBLAS workspace by
a placeholder of the target card's size (`cublas_workspace_bytes`: vLLM's first matmul, which allocates
it, is inside its profile run); attention-kernel workspaces are not (attention returns early there).
Nothing here calls torch.cuda: the profile helper's device.py measures around these calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from kvadvise.model.spec import ModelSpec
from kvadvise.plan.dummy import DummyRunPlan
from kvadvise.profile.build import ShardShape, locate_parts
from kvadvise.profile.sampler import dummy_sampler_run, sampler_rule, v2_dummy_sampler_run

PROFILE_ATTENTION = "kvadvise_profile"
PROFILE_EXPERTS = "kvadvise_fused_moe"

# mirrors vLLM 0.11 envs.py VLLM_FUSED_MOE_CHUNK_SIZE default 16 * 1024 (32768 in older releases);
# the profile batch (<= 16384 tokens by default) fits one chunk either way
FUSED_MOE_CHUNK_TOKENS = 16 * 1024
# The static KV cache a decode step is captured against: one token a sequence (the new one), the minimal
# length; vLLM captures against its whole paged cache, whose size is in no graph figure either way
DECODE_KV_CACHE_TOKENS = 1


# what each attention layer was seen to receive: module -> (kv heads, key head size, value head size, dtype);
# the decode step's static KV cache is shaped from it (prepare_decode_capture)
_ATTENTION_SHAPES: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()
# decoders whose every attention layer was recorded by a forward that ran to its end
_RECORDED_DECODERS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
# during a captured decode step: module -> (key cache, value cache), the static cache its attention reads
_DECODE_KV_CACHE: "contextvars.ContextVar[Optional[dict]]" = contextvars.ContextVar("kvadvise_decode_kv_cache",
                                                                                  default=None)


def profile_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """vLLM's attention in the profile run: the output buffer, no scores (attn_metadata is None).

    In a decode step prepared for graph capture, the attention reads its static KV cache instead
    (_cached_decode_attention)."""
    _ATTENTION_SHAPES[module] = (key.shape[1], key.shape[-1], value.shape[-1], key.dtype)
    caches = _DECODE_KV_CACHE.get()
    if caches is not None and module in caches:
        return _cached_decode_attention(query, key, value, caches[module], kwargs.get("scaling")), None
    batch, heads, q_len, _ = query.shape
    # mirrors vLLM 0.11 attention/layer.py: output = torch.empty(num_tokens, num_heads * head_size_v)
    # and v1/attention/backends/flash_attn.py forward: `if attn_metadata is None: return output`
    # (filled with zeros here so dummy values stay finite)
    output = query.new_zeros((batch, q_len, heads, value.shape[-1]))
    return output, None


def _cached_decode_attention(query, key, value, cache, scaling):
    """One decode token per sequence against the static KV cache: the new key and value are written into
    each sequence's slot in place (vLLM's reshape_and_cache), then attention reads the cache.

    query (1, heads, n, d) and key / value (1, kv_heads, n, d) come flat, one token of each of n sequences;
    the cache is (largest, kv_heads, DECODE_KV_CACHE_TOKENS, d). Returns (1, n, heads, value head size).
    """
    import torch

    key_cache, value_cache = cache
    n = query.shape[2]
    slot = DECODE_KV_CACHE_TOKENS - 1
    key_cache[:n, :, slot].copy_(key[0].transpose(0, 1))
    value_cache[:n, :, slot].copy_(value[0].transpose(0, 1))
    q = query[0].transpose(0, 1).unsqueeze(2)                                   # (n, heads, 1, d)
    keys, values = key_cache[:n], value_cache[:n]
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:   # grouped-query attention; SDPA's enable_gqa needs torch >= 2.5 (we support 2.4)
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=scaling)
    return out.squeeze(2).unsqueeze(0)                                          # (1, n, heads, d_v)


def profile_fused_experts(self, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
    """The buffers of vLLM 0.11's fused_experts_impl (Triton), without computing the experts."""
    import torch

    num_tokens = hidden_states.shape[0]
    hidden = hidden_states.shape[-1]
    top_k = top_k_index.shape[-1]
    if getattr(self, "has_gate", True):
        gate_up = self.gate_up_proj
        n = gate_up.shape[-1] if getattr(self, "is_transposed", False) else gate_up.shape[-2]
    else:
        up = self.up_proj
        n = up.shape[-1] if getattr(self, "is_transposed", False) else up.shape[-2]
    num_experts = getattr(self, "num_experts", None) or self.down_proj.shape[0]
    m = min(num_tokens, FUSED_MOE_CHUNK_TOKENS)
    device, dtype = hidden_states.device, hidden_states.dtype
    # moe_align_block_size (csrc/moe/moe_align_sum_kernels.cu via fused_moe.py): block size from the
    # default Triton config (BLOCK_SIZE_M 16 when M <= E, else 64)
    block = 16 if m <= num_experts else 64
    padded = m * top_k + num_experts * (block - 1)
    sorted_ids = torch.empty(padded, dtype=torch.int32, device=device)
    expert_ids = torch.empty(-(-padded // block), dtype=torch.int32, device=device)
    num_post_pad = torch.empty(1, dtype=torch.int32, device=device)
    # "We can reuse the memory between these because by the time we need cache3, we're done with cache1"
    cache13 = torch.empty(m * top_k * max(n, hidden), dtype=dtype, device=device)
    intermediate_cache2 = torch.empty((m * top_k, n // 2 if getattr(self, "has_gate", True) else n),
                                      dtype=dtype, device=device)
    output = torch.zeros_like(hidden_states)  # inplace=False: out_hidden_states = torch.empty_like(...)
    del sorted_ids, expert_ids, num_post_pad, cache13, intermediate_cache2
    return output


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PROFILE_ATTENTION, profile_attention)
    try:
        from transformers.integrations.moe import ExpertsInterface

        ExpertsInterface.register(PROFILE_EXPERTS, profile_fused_experts)
    except ImportError:  # older transformers: experts keep their own forward
        pass


def _configs(model) -> list:
    from transformers import PretrainedConfig

    found: dict[int, Any] = {}
    stack = [module.config for module in model.modules() if isinstance(getattr(module, "config", None),
                                                                          PretrainedConfig)]
    while stack:
        config = stack.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if isinstance(sub, PretrainedConfig):
                stack.append(sub)
    return list(found.values())


@contextlib.contextmanager
def profile_implementations(model) -> Iterator[None]:
    """Switch the model to the profile-run attention and MoE implementations; restore on exit."""
    _register()
    saved = []
    for config in _configs(model):
        saved.append((config, config.__dict__.get("_attn_implementation_internal"),
                      config.__dict__.get("_experts_implementation_internal")))
        config.__dict__["_attn_implementation_internal"] = PROFILE_ATTENTION
        config.__dict__["_experts_implementation_internal"] = PROFILE_EXPERTS
    try:
        yield
    finally:
        for config, attention, experts in saved:
            config.__dict__["_attn_implementation_internal"] = attention
            config.__dict__["_experts_implementation_internal"] = experts


def _text_config(model):
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return text or config


@dataclass
class DummyInputs:
    """vLLM's persistent input buffers (allocated before the profile run) for up to num_tokens tokens."""

    input_ids: Any                     # int32 (num_tokens,)
    positions: Any                     # int64 (num_tokens,)
    intermediate: Optional[tuple] = None  # off the first PP stage: (hidden_states, residual)
    logits_indices: Any = None         # int64 (requests,): each request's last token (Model Runner V2's buffer)


def make_dummy_inputs(plan: DummyRunPlan, model, *, device, sampler_rule: str = "0.11") -> DummyInputs:
    """The token-id and position buffers of a plan (vLLM's persistent input buffers hold them before
    profiling: InputBatch in the V1 runner, InputBuffers in Model Runner V2, which also holds the logits
    indices: sampler rule "0.33")."""
    import torch

    input_ids = torch.zeros(plan.num_tokens, dtype=torch.int32, device=device)
    positions = _device_tensor(plan.positions, device)
    logits_indices = _device_tensor(plan.last_token_indices, device) if sampler_rule == "0.33" else None
    return DummyInputs(input_ids=input_ids, positions=positions, logits_indices=logits_indices)


def _device_tensor(values, device):
    """An int64 device tensor of `values`: allocated on the device, filled from the host (works on meta)."""
    import torch

    out = torch.empty(len(values), dtype=torch.int64, device=device)
    out.copy_(torch.tensor(values, dtype=torch.int64))
    return out


def _compute_logits(model, spec: ModelSpec, shape: Optional[ShardShape]) -> Callable[[Any], Any]:
    """vLLM's compute_logits: lm_head in the model dtype, softcap, TP all-gather over the vocabulary."""
    import torch

    lm_head = model.lm_head
    text = _text_config(model)
    soft_cap = getattr(text, "final_logit_softcapping", None)
    tp = shape.tensor_parallel_size if shape is not None else 1
    vocab = spec.vocab_size

    def compute(hidden_states):
        logits = lm_head(hidden_states)
        if tp > 1:
            # mirrors vLLM 0.11 distributed/parallel_state.py GroupCoordinator._all_gather_out_place
            # (dim=-1): gather into (tp * rows, local_vocab), view, movedim, reshape (a copy)
            rows, local = logits.shape
            gathered = torch.empty((tp * rows, local), dtype=logits.dtype, device=logits.device)
            gathered = gathered.reshape((tp, rows, local)).movedim(0, 1).reshape(rows, tp * local)
            logits = gathered
        # mirrors vLLM 0.11 model_executor/layers/logits_processor.py _get_logits: logits[..., :org_vocab]
        logits = logits[..., :vocab]
        if soft_cap:
            # mirrors vLLM 0.11 logits_processor.py forward: logits / soft_cap, tanh, * soft_cap
            logits = logits / soft_cap
            logits = torch.tanh(logits)
            logits = logits * soft_cap
        return logits

    return compute


def _forward(parts, inputs: DummyInputs, num_tokens: int):
    """The decoder stack on one flat sequence; returns the last hidden state (1, tokens, hidden)."""
    positions = inputs.positions[:num_tokens].unsqueeze(0)
    if inputs.intermediate is not None:
        hidden_in = inputs.intermediate[0][:num_tokens].unsqueeze(0)
        out = parts.decoder(inputs_embeds=hidden_in, position_ids=positions, use_cache=False)
    else:
        ids = inputs.input_ids[:num_tokens].unsqueeze(0)
        out = parts.decoder(input_ids=ids, position_ids=positions, use_cache=False)
    if _DECODE_KV_CACHE.get() is None:
        _RECORDED_DECODERS[parts.decoder] = True      # every attention layer has been through profile_attention
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _profile_encoder(model, num_tokens: int, device) -> Optional[tuple]:
    """vLLM's multimodal encoder profiling, for image models with a fixed token count per image.

    mirrors vLLM 0.11 v1/worker/gpu_model_runner.py profile_run: the encoder runs first on the largest
    dummy batch the encoder budget allows (max(max_num_batched_tokens, tokens per item) // tokens per
    item images of the maximum size), and `batched_dummy_mm_inputs` / `dummy_encoder_outputs` stay
    referenced (locals, and the encoder cache) until profile_run returns, i.e. through the language
    model's run and the sampler. Pixel values stay float32 as the processor made them (the encoder casts
    a copy). Done for configs that state `mm_tokens_per_image` and `vision_config.image_size` (Gemma 3);
    other multimodal models (dynamic resolution, video, audio) are not profiled here: returns None.
    """
    import torch

    config = model.config
    per_item = getattr(config, "mm_tokens_per_image", None)
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None) if vision is not None else None
    if not per_item or not size or not hasattr(model, "get_image_features"):
        return None
    items = max(num_tokens, per_item) // per_item
    channels = getattr(vision, "num_channels", 3) or 3
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    pixel_values = torch.zeros((items, channels, size, size), dtype=torch.float32, device=device)
    output = model.get_image_features(pixel_values.to(dtype))
    # vLLM keeps the projected embeddings only (get_multimodal_embeddings), not the tower's states
    features = getattr(output, "pooler_output", None)
    if features is None:
        features = output[0] if isinstance(output, (tuple, list)) else output
    del output
    return pixel_values, features


def multimodal_encoder_items(model, num_tokens: int) -> Optional[int]:
    """How many dummy images the encoder profiling uses (None: not profiled for this model)."""
    config = getattr(model, "config", None)
    per_item = getattr(config, "mm_tokens_per_image", None)
    vision = getattr(config, "vision_config", None)
    if not per_item or vision is None or not getattr(vision, "image_size", None):
        return None
    return max(num_tokens, per_item) // per_item


def dummy_run(model, spec: ModelSpec, plan: DummyRunPlan, *, device, run_sampler: bool = True,
              sampler_version: str = "0.11", shape: Optional[ShardShape] = None,
              inputs: Optional[DummyInputs] = None, kernel_workspaces: Optional[bool] = None,
              cublas_workspace_bytes: int = 0, profile_encoder: bool = True) -> None:
    """One vLLM profile run: forward of plan.num_tokens tokens without KV cache, then the sampler.

    Nothing is kept: every tensor made here is released before returning (the caller measures the peak
    around this call). `inputs`: buffers made before the measurement (vLLM's persistent input buffers);
    made here, and counted, when not given. The sampler runs only where the model has an lm_head (the
    last pipeline stage) and run_sampler is true. kernel_workspaces: emulate the CUDA sort kernel's own
    allocations (None = on CPU and fake tensors, not on a real CUDA device; see sampler.py).
    cublas_workspace_bytes: on CPU / fake tensors, a placeholder for the cuBLAS workspace that a CUDA
    process allocates at its first matmul (kvadvise.plan.dummy.cublas_workspace_bytes for the target
    card), live from the first layer to the end; 0 = none (a real CUDA device makes its own).
    profile_encoder: on the first stage of an image model, run the encoder first and keep its dummy
    inputs and outputs alive, as vLLM does (see _profile_encoder).
    """
    import torch

    parts = locate_parts(model)
    own_inputs = inputs is None
    rule = sampler_rule(sampler_version)[0]
    hidden_states = last_hidden_states = index = indices = cublas_workspace = encoder_kept = None
    try:
        with torch.inference_mode(), profile_implementations(model):
            if own_inputs:
                inputs = make_dummy_inputs(plan, model, device=device, sampler_rule=rule)
            cublas_workspace = (torch.empty(cublas_workspace_bytes, dtype=torch.uint8, device=device)
                                if cublas_workspace_bytes > 0 else None)
            encoder_kept = (_profile_encoder(model, plan.num_tokens, device)
                            if profile_encoder and parts.has_embedding else None)
            if not parts.has_embedding:
                # mirrors vLLM 0.11 gpu_model_runner._dummy_run: self.intermediate_tensors =
                # self.model.make_empty_intermediate_tensors(batch_size=self.max_num_tokens, ...)
                hidden = _text_config(model).hidden_size
                dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
                inputs.intermediate = (torch.zeros((plan.num_tokens, hidden), dtype=dtype, device=device),
                                       torch.zeros((plan.num_tokens, hidden), dtype=dtype, device=device))
            hidden_states = _forward(parts, inputs, plan.num_tokens)
            if run_sampler and parts.lm_head is not None and rule == "0.33":
                # mirrors vLLM 0.33 v1/worker/gpu/model_runner.py _dummy_run: sample_hidden_states =
                # hidden_states[input_batch.logits_indices] (a persistent index buffer, then a copy)
                indices = inputs.logits_indices
                if indices is None:
                    indices = index = _device_tensor(plan.last_token_indices, device)
                last_hidden_states = hidden_states[0, indices]
                v2_dummy_sampler_run(last_hidden_states, _compute_logits(model, spec, shape), inputs.positions,
                                     inputs.input_ids, indices)
                indices = None
            elif run_sampler and parts.lm_head is not None:
                # hidden_states[logit_indices] with a numpy index: an int64 index tensor, then a copy
                index = _device_tensor(plan.last_token_indices, device)
                last_hidden_states = hidden_states[0, index]
                index = None
                dummy_sampler_run(last_hidden_states, _compute_logits(model, spec, shape),
                                  vllm_version=sampler_version, kernel_workspaces=kernel_workspaces)
    except BaseException as error:
        # an out-of-memory error's traceback would keep every frame's tensors alive: drop them
        import traceback

        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        hidden_states = last_hidden_states = index = indices = cublas_workspace = encoder_kept = None
        if own_inputs:
            inputs = None
        elif inputs is not None and inputs.intermediate is not None:
            inputs.intermediate = None


# ------------------------------------------------------------------ decode step (CUDA graphs) ----------

@dataclass
class DecodeCapture:
    """Static buffers for capturing decode steps up to max_size sequences, and the step factory."""

    inputs: DummyInputs
    static_bytes: int                  # every static buffer: inputs and the KV cache
    make_step: Callable[[int], Callable[[], Any]]
    kv_cache: dict = field(default_factory=dict)     # attention module -> (key cache, value cache)
    kv_cache_bytes: int = 0


def _attention_shapes(model, parts, inputs: DummyInputs) -> dict:
    """module -> (kv heads, key head size, value head size, dtype) of every decoder attention layer that goes
    through the profile attention (not an image encoder's); from the profile run when its forward ran to the
    end on this decoder, else from a one-token probe."""
    import torch

    if parts.decoder not in _RECORDED_DECODERS:
        with torch.inference_mode(), profile_implementations(model):
            probe = _forward(parts, inputs, 1)
        del probe
    return {module: _ATTENTION_SHAPES[module] for module in parts.decoder.modules() if module in _ATTENTION_SHAPES}


def prepare_decode_capture(model, spec: ModelSpec, sizes: Sequence[int], *, device,
                           shape: Optional[ShardShape] = None) -> DecodeCapture:
    """Buffers and a step factory for the decode step vLLM captures: `make_step(n)()` runs the decoder
    on n sequences of one new token each, reading only the static buffers (capturable).

    vLLM's decode graph holds the model forward only (compute_logits and the sampler run outside it), its
    attention writing the new token's key and value into the paged KV cache and reading it. Here every
    attention layer gets a static KV cache of the minimal length (DECODE_KV_CACHE_TOKENS a sequence, for
    the largest size) that its attention writes and reads (_cached_decode_attention); layers without the
    transformers attention interface (linear attention, Mamba) run their own stateless forward.
    static_bytes: every buffer allocated here, inputs and KV cache (kv_cache_bytes); none of them is part
    of the graph pool, so graph memory is measured after they exist.
    """
    import torch

    parts = locate_parts(model)
    largest = max(sizes)
    input_ids = torch.zeros(largest, dtype=torch.int32, device=device)
    positions = torch.zeros(largest, dtype=torch.int64, device=device)
    inputs = DummyInputs(input_ids=input_ids, positions=positions)
    buffers = [input_ids, positions]
    if not parts.has_embedding:
        hidden = _text_config(model).hidden_size
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        inputs.intermediate = (torch.zeros((largest, hidden), dtype=dtype, device=device),
                               torch.zeros((largest, hidden), dtype=dtype, device=device))
        buffers.extend(inputs.intermediate)
    kv_cache = {}
    for module, (kv_heads, key_size, value_size, dtype) in _attention_shapes(model, parts, inputs).items():
        kv_cache[module] = (
            torch.zeros((largest, kv_heads, DECODE_KV_CACHE_TOKENS, key_size), dtype=dtype, device=device),
            torch.zeros((largest, kv_heads, DECODE_KV_CACHE_TOKENS, value_size), dtype=dtype, device=device))
    kv_cache_bytes = sum(t.untyped_storage().nbytes() for pair in kv_cache.values() for t in pair)
    static_bytes = sum(buffer.untyped_storage().nbytes() for buffer in buffers) + kv_cache_bytes

    def make_step(size: int) -> Callable[[], Any]:
        if size > largest:
            raise ValueError(f"size {size} exceeds the prepared {largest}")

        def step():
            token = _DECODE_KV_CACHE.set(kv_cache)
            try:
                with torch.inference_mode(), profile_implementations(model):
                    return _forward(parts, inputs, size)
            finally:
                _DECODE_KV_CACHE.reset(token)

        return step

    return DecodeCapture(inputs=inputs, static_bytes=static_bytes, make_step=make_step, kv_cache=kv_cache,
                         kv_cache_bytes=kv_cache_bytes)
