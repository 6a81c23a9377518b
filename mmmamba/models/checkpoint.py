"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (sharded with an index above a size).

Nothing is pickled and nothing from the folder is executed. Files are written under a temporary
name and renamed, so an interrupted save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import MmmambaError
from .config import DecoderConfig
from .decoder import Decoder

FORMAT = "mmmamba"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 * 1024**3


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _write_atomic(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def save_checkpoint(model: Decoder, path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    shards: list[dict] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for stale in [*path.glob("model*.safetensors"), path / INDEX]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        _write_atomic(path / WEIGHTS, lambda p: save_file(shards[0], str(p), metadata={"format": "pt"}))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_atomic(path / fname, lambda p, s=shard: save_file(s, str(p), metadata={"format": "pt"}))
            weight_map.update(dict.fromkeys(shard, fname))
        write_json(
            path / INDEX,
            {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                "weight_map": weight_map,
            },
        )
    write_json(path / "config.json", {"format": FORMAT, **model.config.to_dict()})


def read_config_json(path: Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise MmmambaError(f"{f}: no config.json; point at a checkpoint folder written by mmmamba or Hugging Face")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise MmmambaError(f"{f}: not valid JSON ({e.msg} at line {e.lineno}); re-save the checkpoint") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder, from ``model.safetensors`` or the shards its index names."""
    path = Path(path)
    index = path / INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [WEIGHTS] if (path / WEIGHTS).is_file() else sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise MmmambaError(f"{path}: no *.safetensors weights found; copy the weight files into the folder")
    tensors = {}
    for fname in files:
        f = path / fname
        if not f.is_file():
            raise MmmambaError(f"{f}: shard named in {INDEX} is missing; copy it into the folder")
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    tensors[k] = st.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise MmmambaError(f"{f}: unreadable safetensors file ({e}); re-download or re-save it") from None
    return tensors


def load_state_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Copy ``tensors`` into ``model``; every parameter must be present with the right shape."""
    expected = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        expected.pop("lm_head.weight", None)
    for name, param in expected.items():
        got = tuple(tensors[name].shape) if name in tensors else None
        if got is None:
            raise MmmambaError(
                f"{source}: tensor {name!r} is missing; the checkpoint is incomplete or from another model"
            )
        if got != tuple(param.shape):
            raise MmmambaError(f"{source}: tensor {name!r} has shape {got}, the config needs {tuple(param.shape)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise MmmambaError(f"{source}: unexpected tensor(s) {unexpected[:5]}; the config does not match the weights")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name])


def load_checkpoint(path, dtype: torch.dtype | None = None) -> Decoder:
    path = Path(path)
    raw = read_config_json(path)
    if raw.pop("format", None) != FORMAT:
        if "architectures" in raw:  # a Hugging Face folder
            from .hf_import import load_hf_decoder

            return load_hf_decoder(path, raw, dtype)
        raise MmmambaError(f"{path}/config.json: neither an mmmamba nor a Hugging Face checkpoint")
    return build_loaded(DecoderConfig.from_dict(raw), read_safetensors(path), path, dtype)


def build_loaded(cfg: DecoderConfig, tensors: dict[str, torch.Tensor], source, dtype=None) -> Decoder:
    """A model of ``cfg`` holding ``tensors`` (strictly), built without a throw-away random init."""
    dtype = dtype or next(iter(tensors.values())).dtype
    with torch.device("meta"):
        model = Decoder(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    load_state_strict(model, tensors, source)
    return model.eval()
