"""Build a transformers model from a config dict on torch's meta device: shapes and dtypes, no storage.

The class is the config's `architectures[0]` when transformers has it (so a multimodal model keeps its
vision tower, as vLLM loads it), else AutoModelForCausalLM. `quantization_config` is dropped before the
build: quantized layers are re-counted in weights.py as vLLM stores them. The runner helper's
kvadvise/profile/build.py builds the same models for the profile; this module only needs shapes.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from kvadvise.errors import InputError

TORCH_DTYPES = ("bfloat16", "float16", "float32")


def config_object(config: Mapping[str, Any]) -> Any:
    """A transformers PretrainedConfig from a dict (quantization_config removed)."""
    from transformers import AutoConfig

    data = copy.deepcopy(dict(config))
    data.pop("quantization_config", None)
    if isinstance(data.get("text_config"), dict):
        data["text_config"].pop("quantization_config", None)
    model_type = data.get("model_type")
    if not model_type:
        raise InputError("config has no model_type: cannot build the model from it")
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, KeyError) as exc:
        raise InputError(f"transformers cannot read a {model_type!r} config: {exc}",
                         hint="a model that needs --trust-remote-code cannot be estimated offline") from None


def model_class(config: Mapping[str, Any], config_obj: Any) -> Any:
    import transformers

    for name in config.get("architectures") or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def build_meta_model(config: Mapping[str, Any], model_dtype: str) -> Any:
    """The model on the meta device in `model_dtype` (parameters and buffers have shapes, no storage)."""
    import torch

    if model_dtype not in TORCH_DTYPES:
        raise InputError(f"unsupported dtype {model_dtype!r}", hint="use bfloat16, float16 or float32")
    config_obj = config_object(config)
    cls = model_class(config, config_obj)
    dtype = getattr(torch, model_dtype)
    try:
        with torch.device("meta"):
            if hasattr(cls, "from_config"):
                model = cls.from_config(config_obj, dtype=dtype)
            else:
                model = cls._from_config(config_obj, dtype=dtype)
    except Exception as exc:  # transformers raises many kinds for configs it cannot build
        raise InputError(f"cannot build {cls.__name__} from the config: {type(exc).__name__}: {exc}") from None
    return model
