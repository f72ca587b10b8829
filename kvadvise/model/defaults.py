"""transformers' class defaults for the config fields a model spec reads, copied so that no torch is imported.

vLLM reads a model through transformers' config classes, so a key that config.json leaves out takes the
class default (google/gemma-3-4b-it's `text_config` names no heads, kv heads, head_dim or vocab). Importing
a transformers configuration module imports torch (1.6 s here, measured with transformers 5.23), which the
arithmetic-only commands cannot afford. This table holds those defaults, copied from transformers 5.23
`models/<type>/configuration_<type>.py` (class attributes; `None` defaults are left out because vLLM's own
lookup order handles them). tests/test_model_spec.py compares every entry with the installed transformers'
real classes, so a drift fails a test instead of giving a silent wrong number.

Knows: the listed model types only. Does not know: defaults computed in `__post_init__` from other fields
(those are re-derived by the spec code from the fields the config does give).
"""

from __future__ import annotations

from typing import Any, Mapping

TRANSFORMERS_VERSION = "5.23"

# model_type -> {field: class default}; generated from transformers 5.23 class attributes.
CLASS_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "llama": {"vocab_size": 32000, "num_attention_heads": 32, "max_position_embeddings": 2048,
              "tie_word_embeddings": False, "intermediate_size": 11008},
    "mistral": {"vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 131072, "sliding_window": 4096, "tie_word_embeddings": False,
                "intermediate_size": 14336},
    "mixtral": {"vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 131072, "tie_word_embeddings": False, "intermediate_size": 14336},
    "qwen2": {"vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": False,
              "max_window_layers": 28, "tie_word_embeddings": False, "intermediate_size": 22016},
    "qwen2_moe": {"vocab_size": 151936, "num_attention_heads": 16, "num_key_value_heads": 16,
                  "max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": False,
                  "max_window_layers": 28, "tie_word_embeddings": False, "intermediate_size": 5632},
    "qwen3": {"vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
              "max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": False,
              "max_window_layers": 28, "tie_word_embeddings": False, "intermediate_size": 22016},
    "qwen3_moe": {"vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 4,
                  "max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": False,
                  "tie_word_embeddings": False, "intermediate_size": 6144},
    "qwen3_next": {"vocab_size": 151936, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
                   "max_position_embeddings": 32768, "tie_word_embeddings": False, "intermediate_size": 5632},
    "qwen3_vl_text": {"vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 32,
                      "head_dim": 128, "max_position_embeddings": 128000, "intermediate_size": 22016},
    "qwen3_5_text": {"vocab_size": 248320, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
                     "max_position_embeddings": 32768, "tie_word_embeddings": False, "intermediate_size": 12288},
    "qwen3_5_moe_text": {"vocab_size": 248320, "num_attention_heads": 16, "num_key_value_heads": 2,
                         "head_dim": 256, "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "gemma": {"vocab_size": 256000, "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
              "max_position_embeddings": 8192, "tie_word_embeddings": True, "intermediate_size": 24576},
    "gemma2": {"vocab_size": 256000, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "max_position_embeddings": 8192, "sliding_window": 4096, "tie_word_embeddings": True,
               "intermediate_size": 9216},
    "gemma3_text": {"vocab_size": 262208, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "max_position_embeddings": 131072, "sliding_window": 4096, "tie_word_embeddings": True,
                    "intermediate_size": 9216},
    "gpt_oss": {"vocab_size": 201088, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                "max_position_embeddings": 131072, "sliding_window": 128, "tie_word_embeddings": False,
                "intermediate_size": 2880},
    "deepseek_v2": {"vocab_size": 102400, "num_attention_heads": 32, "max_position_embeddings": 2048,
                    "tie_word_embeddings": False, "intermediate_size": 11008},
    "deepseek_v3": {"vocab_size": 129280, "num_attention_heads": 128, "num_key_value_heads": 128,
                    "max_position_embeddings": 4096, "tie_word_embeddings": False, "intermediate_size": 18432},
    "llama4_text": {"vocab_size": 202048, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 131072, "tie_word_embeddings": False, "attention_chunk_size": 8192,
                    "no_rope_layer_interval": 4, "intermediate_size": 8192},
    "nemotron_h": {"vocab_size": 131072, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                   "max_position_embeddings": 4096, "tie_word_embeddings": False, "intermediate_size": 21504},
    "gpt2": {"vocab_size": 50257, "tie_word_embeddings": True},
    "opt": {"vocab_size": 50272, "num_attention_heads": 12, "max_position_embeddings": 2048,
            "tie_word_embeddings": True},
    "falcon": {"vocab_size": 65024, "num_attention_heads": 71, "max_position_embeddings": 2048,
               "tie_word_embeddings": True},
    "gpt_bigcode": {"vocab_size": 50257, "tie_word_embeddings": True},
    "phi3": {"vocab_size": 32064, "num_attention_heads": 32, "max_position_embeddings": 4096,
             "tie_word_embeddings": False, "intermediate_size": 8192},
    "jamba": {"vocab_size": 65536, "num_attention_heads": 32, "num_key_value_heads": 8,
              "max_position_embeddings": 262144, "tie_word_embeddings": False, "intermediate_size": 14336,
              "attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16, "mamba_d_conv": 4,
              "mamba_expand": 2, "num_experts": 16, "num_experts_per_tok": 2},
    "granitemoehybrid": {"vocab_size": 32000, "num_attention_heads": 32, "max_position_embeddings": 2048,
                         "tie_word_embeddings": False, "intermediate_size": 11008, "mamba_d_state": 256,
                         "mamba_d_conv": 4, "mamba_expand": 2, "mamba_n_heads": 128, "mamba_n_groups": 1,
                         "mamba_d_head": "auto", "num_experts_per_tok": 2},
    "cohere2": {"vocab_size": 256000, "num_attention_heads": 64, "max_position_embeddings": 8192,
                "sliding_window": 4096, "tie_word_embeddings": True, "intermediate_size": 22528},
    "starcoder2": {"vocab_size": 49152, "num_attention_heads": 24, "num_key_value_heads": 2,
                   "max_position_embeddings": 4096, "tie_word_embeddings": True, "intermediate_size": 12288},
}

# Defaults that live in `__post_init__` keyword handling, not in class attributes (transformers 5.23):
# gemma3 `kwargs.get("sliding_window_pattern", 6)`, qwen3_next / qwen3_5 `kwargs.pop("full_attention_interval", 4)`.
# Tested by building the real config and comparing its derived `layer_types`.
POST_INIT_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "gemma3_text": {"sliding_window_pattern": 6},
    "cohere2": {"sliding_window_pattern": 4},  # Cohere2Config: kwargs.pop("sliding_window_pattern", 4)
    "qwen3_next": {"full_attention_interval": 4},
    "qwen3_5_text": {"full_attention_interval": 4},
    "qwen3_5_moe_text": {"full_attention_interval": 4},
}

# SSM-state dtype class defaults (transformers 5.23 NemotronHConfig.mamba_ssm_cache_dtype). Kept apart from
# CLASS_DEFAULTS: vLLM >= 0.24 (transformers 5) reads this default when config.json is silent, while vLLM up to
# 0.12 ignored the field and used the model dtype, so the spec reports it without filling ssm_state_dtype.
SSM_STATE_DTYPE_DEFAULTS: Mapping[str, str] = {"nemotron_h": "float32"}

# transformers' `attribute_map` aliases (standard name -> the name the config file uses), 5.23.
ATTRIBUTE_ALIASES: Mapping[str, Mapping[str, str]] = {
    "gpt2": {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
             "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"},
    "gpt_bigcode": {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                    "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"},
    "gptj": {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
             "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"},
    "bloom": {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "mpt": {"num_attention_heads": "n_heads", "hidden_size": "d_model", "num_hidden_layers": "n_layers"},
    # FalconConfig accepts the RefinedWeb names n_head / n_layer / n_embed as keyword aliases.
    "falcon": {"num_attention_heads": "n_head", "num_hidden_layers": "n_layer", "hidden_size": "n_embed"},
}


def class_defaults(model_type: str) -> Mapping[str, Any]:
    """The copied class defaults for MODEL_TYPE plus its __post_init__ keyword defaults (empty if unknown)."""
    merged = dict(CLASS_DEFAULTS.get(model_type, {}))
    merged.update(POST_INIT_DEFAULTS.get(model_type, {}))
    return merged
