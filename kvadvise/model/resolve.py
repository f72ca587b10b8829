"""Find and read a model's config: a JSON file, a directory with config.json, or a hub id in the local cache.

Knows: where config.json (and nvidia ModelOpt's hf_quant_config.json beside it) lives, and how to read
JSON the way Python's json does (accepting the bare `Infinity` in Nemotron-H). Never downloads: a hub id is
looked up in the local Hugging Face cache only (`HF_HUB_OFFLINE=1` works). huggingface_hub is imported
only for hub ids; torch and transformers never.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from kvadvise.errors import InputError

CONFIG_NAME = "config.json"
QUANT_CONFIG_NAME = "hf_quant_config.json"  # ModelOpt <= 0.29 writes its quantization here (vLLM get_config)


@dataclass(frozen=True)
class ConfigFiles:
    """The parsed config.json and the extra files found beside it."""

    config: Mapping[str, Any]
    config_path: str
    extra_files: Mapping[str, Mapping[str, Any]]


def read_json(path: Path, what: str = "config") -> dict[str, Any]:
    """Parse PATH as a JSON object; malformed or non-object JSON is an InputError naming the place."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None
    try:
        data = json.loads(text)  # Python's json accepts Infinity / NaN, as transformers does
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON in {path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} is not a JSON object (found {type(data).__name__})")
    return data


def hub_cache_dir() -> Path:
    """The hub cache directory as huggingface_hub would choose it, read from the environment now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if not hf_home:
        hf_home = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def _looks_like_path(model: str) -> bool:
    """A hub id is `name` or `org/name`; anything else that does not exist is a missing path."""
    return model.startswith((".", "/", "~")) or model.endswith(".json") or model.count("/") > 1


def _from_directory(directory: Path) -> ConfigFiles:
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise InputError(f"directory {directory} has no {CONFIG_NAME}",
                         hint="pass the model directory (with config.json), a JSON config file, or a hub id")
    extra: dict[str, Mapping[str, Any]] = {}
    quant_path = directory / QUANT_CONFIG_NAME
    if quant_path.is_file():
        extra[QUANT_CONFIG_NAME] = read_json(quant_path, what="quantization config")
    return ConfigFiles(read_json(config_path), str(config_path), extra)


def _from_hub_cache(repo_id: str, revision: Optional[str]) -> ConfigFiles:
    from huggingface_hub import try_to_load_from_cache  # only hub ids pay for this import (~0.1 s)

    cache_dir = hub_cache_dir()
    try:
        found = try_to_load_from_cache(repo_id, CONFIG_NAME, cache_dir=str(cache_dir), revision=revision)
    except Exception as exc:  # HFValidationError for ids that cannot be repo ids
        raise InputError(f"{repo_id!r} is neither a local path nor a valid hub id ({exc.__class__.__name__})") from None
    if not isinstance(found, str):
        raise InputError(
            f"{repo_id} is not a local file or directory, and its {CONFIG_NAME} is not in the local "
            f"Hugging Face cache ({cache_dir})",
            hint=f"download it first (hf download {repo_id} {CONFIG_NAME}) or pass a path")
    extra: dict[str, Mapping[str, Any]] = {}
    quant = try_to_load_from_cache(repo_id, QUANT_CONFIG_NAME, cache_dir=str(cache_dir), revision=revision)
    if isinstance(quant, str):
        extra[QUANT_CONFIG_NAME] = read_json(Path(quant), what="quantization config")
    return ConfigFiles(read_json(Path(found)), found, extra)


def find_config(model: str, revision: Optional[str] = None) -> ConfigFiles:
    """Resolve MODEL: an existing JSON file, an existing directory, else a hub id in the local cache."""
    if not model or not model.strip():
        raise InputError("no model given")
    path = Path(model).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        if path.name == CONFIG_NAME:  # a model directory's own config.json: read it as the directory
            return _from_directory(path.parent)
        return ConfigFiles(read_json(path), str(path), {})
    if _looks_like_path(model):
        raise InputError(f"no such file or directory: {model}")
    return _from_hub_cache(model, revision)
