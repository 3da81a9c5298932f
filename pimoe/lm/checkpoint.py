"""PiMoE-LM checkpoints: safetensors weights plus a JSON config, never pickle.

`save_checkpoint(model, "m.safetensors")` writes m.safetensors and m.json. The same JSON document is also stored in the
safetensors header's metadata (key "pimoe_config"), so a single uploaded .safetensors file is enough to rebuild the
model. Loading checks everything a user-supplied file can get wrong and raises a ValueError naming the file and the
problem: missing file, invalid JSON, a corrupt or truncated safetensors header or body, missing or unexpected tensors,
shape mismatches, non-finite values, pickles, and configs larger than `checkpoint_limits.CONFIG_LIMITS` (checked
before anything is allocated).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from pimoe.devices import available_device
from pimoe.layer.config import RouterConfig
from pimoe.lm.checkpoint_limits import check_config_limits, pickle_kind
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.text import TypeToExpertMapping
from pimoe.output_paths import writable_destination

__all__ = [
    "CHECKPOINT_FORMAT",
    "json_safe",
    "CHECKPOINT_FORMAT_VERSION",
    "METADATA_KEY",
    "checkpoint_destination",
    "checkpoint_document",
    "load_checkpoint",
    "load_checkpoint_bytes",
    "read_checkpoint_document",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "pimoe-lm"
CHECKPOINT_FORMAT_VERSION = 1
METADATA_KEY = "pimoe_config"
_HEADER_SIZE_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header, then the tensor data
_MAX_LISTED = 5


def checkpoint_document(model: PiMoELM, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document describing a model: format, LMConfig, each layer's live router settings, the token-type
    mapping and free-form training metadata (seed, command, measured numbers)."""
    mapping = model.mapping
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "router_configs": [asdict(router.config) for router in model.routers],
        "mapping": {
            "type_to_expert": {token_type.name.lower(): expert for token_type, expert in mapping.type_to_expert.items()},
            "fallback": mapping.fallback,
        },
        "metadata": metadata or {},
    }


def _atomic_write(path: Path, data: bytes) -> None:
    # Write then rename, so a crash mid-write never leaves a truncated checkpoint under the real name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_destination(path: str | Path) -> Path:
    """`path` checked as a checkpoint's destination (a .safetensors file in a writable folder, created here). Call it
    before training, so a bad --out fails in a second, not after the run it would lose."""
    return writable_destination(path, "checkpoint", ".safetensors")


def save_checkpoint(model: PiMoELM, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `path` (.safetensors) and `path.with_suffix(".json")`. Returns the weights path."""
    path = checkpoint_destination(path)
    document = checkpoint_document(model, metadata)
    text = json.dumps(document, indent=2, ensure_ascii=False)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    weights = save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(document, ensure_ascii=False)})
    _atomic_write(path, weights)
    _atomic_write(path.with_suffix(".json"), (text + "\n").encode("utf-8"))
    return path


def _read_header(data: bytes, name: str) -> dict[str, Any]:
    """Parse and sanity-check the safetensors header, so truncation is reported as such and not as a Rust panic."""
    kind = pickle_kind(data)
    if kind is not None:
        raise ValueError(f"{name} is {kind}, not a safetensors file. Pickles are refused: loading one runs whatever "
                         "code it holds. Convert it where you trust it: `safetensors.torch.save_file(torch.load(path), "
                         "'model.safetensors')`")
    if len(data) < _HEADER_SIZE_BYTES:
        raise ValueError(f"{name} is not a safetensors file: {len(data)} bytes, too short for the 8-byte header size")
    (header_size,) = struct.unpack("<Q", data[:_HEADER_SIZE_BYTES])
    available = len(data) - _HEADER_SIZE_BYTES
    if header_size > available:
        raise ValueError(f"{name} is truncated or corrupt: its header claims {header_size} bytes but only {available} "
                         "bytes follow")
    try:
        header = json.loads(data[_HEADER_SIZE_BYTES:_HEADER_SIZE_BYTES + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{name} has a corrupt safetensors header (not valid JSON: {error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name} has a corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    body = available - header_size
    for tensor_name, entry in header.items():
        if tensor_name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{name} has a corrupt safetensors header: tensor {tensor_name!r} has no valid data_offsets")
        if offsets[1] > body:
            raise ValueError(f"{name} is truncated: tensor {tensor_name!r} ends at byte {offsets[1]} of the data "
                             f"section, which holds only {body} bytes")
    return header


def _parse_document(text: bytes | str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{source} must hold a JSON object, got a {type(document).__name__}")
    if document.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{source} is not a PiMoE-LM config: format is {document.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    version = document.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{source} has format_version {version!r}; this version of pimoe reads 1.."
                         f"{CHECKPOINT_FORMAT_VERSION}")
    if "config" not in document:
        raise ValueError(f"{source} has no 'config' entry")
    return document


def _build_model(document: dict[str, Any], source: str) -> PiMoELM:
    check_config_limits(document["config"], source)  # before anything is allocated
    try:
        config = LMConfig.from_dict(document["config"])
        mapping_doc = document.get("mapping") or {}
        mapping = TypeToExpertMapping(overrides=mapping_doc.get("type_to_expert", {}),
                                      fallback=mapping_doc.get("fallback", "language"))
        model = PiMoELM(config, mapping)
        router_configs = document.get("router_configs")
        if router_configs is not None:
            if not isinstance(router_configs, list) or len(router_configs) != config.num_layers:
                raise ValueError(f"router_configs must be a list of {config.num_layers} dicts (one per layer)")
            for router, values in zip(model.routers, router_configs, strict=True):
                router.config = RouterConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source} has an invalid model config: {error}") from None
    return model


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], name: str) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"{name} is missing {len(missing)} tensor(s) the config needs: {missing[:_MAX_LISTED]}")
    if unexpected:
        raise ValueError(f"{name} has {len(unexpected)} unexpected tensor(s): {unexpected[:_MAX_LISTED]}")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"{name}: shape mismatch for tensor {key!r}: expected {tuple(want.shape)}, "
                             f"got {tuple(got.shape)}")
        if want.is_floating_point() and not got.is_floating_point():
            raise ValueError(f"{name}: tensor {key!r} has dtype {got.dtype}, expected a floating-point tensor")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"{name}: tensor {key!r} contains NaN or Inf values")


def load_checkpoint_bytes(weights_bytes: bytes, config_json_bytes: bytes | None = None, name: str = "upload",
                          device: str | torch.device = "cpu", config_name: str | None = None) -> PiMoELM:
    """Rebuild a PiMoELM from the bytes of a .safetensors file and, optionally, of its JSON config.

    Without the JSON the config embedded in the safetensors metadata is used; with it, the JSON wins. The model is
    returned in eval mode on `device`, with the document's training metadata in `model.checkpoint_metadata`.
    """
    device = available_device(device)  # before anything is read into tensors
    header = _read_header(weights_bytes, name)
    if config_json_bytes is not None:
        document = _parse_document(config_json_bytes, config_name or f"{name} config")
    else:
        embedded = (header.get("__metadata__") or {}).get(METADATA_KEY)
        if embedded is None:
            raise ValueError(f"{name} has no model config: no JSON config was given and its safetensors metadata "
                             f"has no {METADATA_KEY!r} entry")
        document = _parse_document(embedded, f"{name} (embedded {METADATA_KEY})")
    model = _build_model(document, config_name or name)
    try:
        tensors = load_safetensors_bytes(weights_bytes)
    except Exception as error:  # safetensors raises its own SafetensorError (and others) for corrupt bodies
        raise ValueError(f"{name} is not a valid safetensors file: {error}") from None
    expected = model.state_dict()
    _check_tensors(tensors, expected, name)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    model.checkpoint_metadata = document.get("metadata") or {}
    return model.to(device).eval()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> PiMoELM:
    """Load `path` (.safetensors) with its config `path.with_suffix(".json")`, or the config embedded in the weights
    when that JSON file does not exist. ValueError naming the file for anything wrong with either."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    config_path = path.with_suffix(".json")
    config_bytes = config_path.read_bytes() if config_path.is_file() and config_path != path else None
    return load_checkpoint_bytes(path.read_bytes(), config_bytes, name=f"checkpoint {path}", device=device,
                                 config_name=f"config {config_path}" if config_bytes is not None else None)


def read_checkpoint_document(path: str | Path) -> dict[str, Any]:
    """The JSON document of a checkpoint (its .json file, else the embedded copy) without building the model."""
    path = Path(path)
    config_path = path.with_suffix(".json")
    if config_path.is_file() and config_path != path:
        return _parse_document(config_path.read_bytes(), f"config {config_path}")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    header = _read_header(path.read_bytes(), f"checkpoint {path}")
    embedded = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if embedded is None:
        raise ValueError(f"checkpoint {path} has no config: neither {config_path} nor an embedded {METADATA_KEY!r}")
    return _parse_document(embedded, f"checkpoint {path} (embedded {METADATA_KEY})")


def json_safe(values):
    """Metadata as strict JSON allows it: NaN floats (e.g. an accuracy with no labelled tokens) become None."""
    if isinstance(values, dict):
        return {k: json_safe(v) for k, v in values.items()}
    if isinstance(values, list):
        return [json_safe(v) for v in values]
    if isinstance(values, float) and math.isnan(values):
        return None
    return values
