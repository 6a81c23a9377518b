"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (sharded with an index above a size).

Nothing is pickled and nothing from the folder is executed. Files are written under a temporary
name and renamed, so an interrupted save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import MmmambaError
from ..io import (
    disk_full_error,
    human_bytes,
    is_disk_full,
    link_or_copy_tree,
    machine_memory,
    read_json,
    recover_for_reading,
    write_dir_atomic,
)
from ..models.config import LIMITS, MAMBA_LIMITS, VISION_LIMITS, DecoderConfig
from ..models.sizing import check_fits

FORMAT = "mmmamba"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MANIFEST = "manifest.json"
MAX_SHARD_BYTES = 2 * 1024**3


OWN_FILES = ("config.json", MANIFEST, INDEX)  # with model*.safetensors: what a save defines anew
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _own_file(name: str) -> bool:
    return name in OWN_FILES or (name.startswith("model") and name.endswith(".safetensors"))


def check_finite(state: dict[str, torch.Tensor], where) -> None:
    """Refuse to write a NaN or infinite weight: a saved model is always a usable one."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MmmambaError(
                f"{where}: refusing to save, tensor {name!r} holds NaN/Inf (training diverged); "
                "lower the learning rate and resume from the last checkpoint"
            )


def _shards(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict]:
    shards: list[dict] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _write_folder(folder: Path, model: torch.nn.Module, state: dict, max_shard_bytes: int, extra) -> None:
    shards = _shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(folder / WEIGHTS), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(t.numel() * t.element_size() for t in state.values())
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({"format": FORMAT, **model.config.to_dict()}, indent=2) + "\n")
    if extra is not None:
        extra(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=2) + "\n")
    mode = 0o666 & ~_umask()
    for p in folder.iterdir():
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(p, mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(
    model: torch.nn.Module, path, max_shard_bytes: int = MAX_SHARD_BYTES, extra=None, replace: bool = True
) -> None:
    """Write a complete checkpoint folder, or leave what was at ``path`` untouched.

    Everything (weights, config, ``extra(folder)`` files such as the tokenizer, then a manifest of
    file sizes) is written into a temporary sibling folder, which is then renamed to ``path``. An
    existing folder at ``path`` is swapped out and removed only after; its files that the new save
    does not define (training state, logs, a tokenizer) are carried over by hard links.

    ``replace=False`` (a one-shot writer without ``--overwrite``): the rename succeeds only onto nothing or
    an empty folder, so that of two processes writing one new path at once, the second is refused rather
    than silently replacing the first's folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MmmambaError(f"{path}: is a file, expected a checkpoint folder; choose another path")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    check_finite(state, path)

    def write(tmp: Path) -> None:
        _write_folder(tmp, model, state, max_shard_bytes, extra)
        if replace and path.is_dir():
            for entry in path.iterdir():
                if not _own_file(entry.name) and not (tmp / entry.name).exists():
                    link_or_copy_tree(entry, tmp / entry.name)

    try:
        write_dir_atomic(path, write, replace)
    except BaseException as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def manifest_sizes(path: Path) -> dict:
    """File sizes a folder's manifest lists ({} without a manifest); a listed file that is missing is an error."""
    f = path / MANIFEST
    if not f.is_file():
        return {}
    files = read_json(f, "checkpoint manifest").get("files")
    if not isinstance(files, dict):
        raise MmmambaError(f"{f}: malformed manifest (no 'files' object); re-save the checkpoint")
    for name in files:
        if (path / str(name)).is_dir():
            raise MmmambaError(f"{path / name}: is a folder, expected a safetensors file; replace it with the file")
        if Path(str(name)).name != name or not (path / name).is_file():
            raise MmmambaError(f"{path / str(name)}: missing from the checkpoint (listed in {MANIFEST}); re-copy it")
        size = (path / name).stat().st_size
        if name.endswith(".safetensors") and size != files[name]:  # weights only: a tokenizer file may be edited
            raise MmmambaError(
                f"{path / name}: {size} bytes where {json.dumps(files[name])} were written ({MANIFEST}); the copy is "
                f"incomplete or was changed: re-copy it (or, if you replaced the weights on purpose, delete {MANIFEST})"
            )
    return files


def read_config_json(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise MmmambaError(f"{path}: no such checkpoint folder; check the path")
    if not path.is_dir():
        raise MmmambaError(f"{path}: is a file, expected a checkpoint folder (config.json + *.safetensors)")
    f = path / "config.json"
    if not f.exists():
        raise MmmambaError(f"{f}: no config.json; point at a checkpoint folder written by mmmamba or Hugging Face")
    return read_json(f, "config.json")


HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position",
}


def _int_field(d: dict, key: str, where: str, limit: int, low: int = 1, optional: bool = False) -> None:
    v = d.get(key)
    if v is None and optional:
        return
    if key not in d:
        raise MmmambaError(f"{where}: config is incomplete, {key} is missing; re-save the checkpoint")
    if isinstance(v, bool) or not isinstance(v, int):
        raise MmmambaError(f"{where}: {key} must be an integer, got {json.dumps(v)}; fix the config")
    if not low <= v <= limit:
        raise MmmambaError(f"{where}: {key} = {v} is outside {low}..{limit}; fix the config")


def _number_field(d: dict, key: str, where: str, low_open: float = 0.0, high: float = math.inf) -> None:
    if key not in d:
        return
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low_open < v <= high:
        raise MmmambaError(f"{where}: {key} must be a finite number in ({low_open}, {high}], got {json.dumps(v)}")


def check_config_dict(raw: dict, where) -> None:
    """Types and sizes of an mmmamba config.json, checked before any object is built from it."""
    for key, limit in LIMITS.items():
        _int_field(raw, key, where, limit, optional=key == "max_position")
    if raw["num_heads"] % raw["num_kv_heads"]:
        raise MmmambaError(
            f"{where}: num_heads {raw['num_heads']} is not a multiple of num_kv_heads {raw['num_kv_heads']}"
        )
    _number_field(raw, "rope_theta", where)
    _number_field(raw, "norm_eps", where, high=1.0)
    for key in ("tie_embeddings", "qkv_bias"):
        if key in raw and not isinstance(raw[key], bool):
            raise MmmambaError(f"{where}: {key} must be true or false, got {json.dumps(raw[key])}")
    mixers = raw.get("mixers", [])
    if not isinstance(mixers, list) or not all(isinstance(m, str) for m in mixers):
        raise MmmambaError(f"{where}: mixers must be a list of 'attention' / 'mamba2'")
    if mixers and len(mixers) != raw["num_layers"]:
        raise MmmambaError(f"{where}: {len(mixers)} mixers listed for {raw['num_layers']} layers")
    for key in ("mamba", "conversion"):
        if not isinstance(raw.get(key, {}), dict):
            raise MmmambaError(f"{where}: {key} must be a JSON object")
    for key, limit in MAMBA_LIMITS.items():
        _int_field(raw.get("mamba", {}), key, f"{where} (mamba)", limit, optional=True)
    vision = raw.get("vision")
    if vision is not None:
        if not isinstance(vision, dict):
            raise MmmambaError(f"{where}: vision must be a JSON object or null")
        for key, limit in VISION_LIMITS.items():
            _int_field(vision, key, f"{where} (vision)", limit, optional=True)
        _int_field(vision, "embed_dim", f"{where} (vision)", LIMITS["hidden_size"], low=0, optional=True)
        _number_field(vision, "downsample_ratio", f"{where} (vision)", high=1.0)
        for key in ("mean", "std"):
            v = vision.get(key, [0.5])
            ok = isinstance(v, list) and v and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
            if not ok or (key == "std" and min(v) <= 0):
                raise MmmambaError(f"{where}: vision.{key} must be a list of finite numbers (std > 0)")
    token = raw.get("image_token_id")
    if token is not None:
        _int_field(raw, "image_token_id", where, raw["vocab_size"] - 1, low=0)
    groups = raw.get("layer_overrides", [])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise MmmambaError(f"{where}: layer_overrides must be a list of objects ({{'layers': [...], ...}})")
    for group in groups:  # the sizes a layer may set, in the same limits as the defaults
        for key in ("num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
            _int_field(group, key, f"{where} (layer_overrides)", LIMITS[key], optional=True)
        _number_field(group, "rope_theta", f"{where} (layer_overrides)")
        _number_field(group, "norm_eps", f"{where} (layer_overrides)", high=1.0)


def check_hf_dict(raw: dict, where) -> None:
    """The size fields of a Hugging Face config.json (and its nested llm/embedding configs)."""
    for sub, name in ((raw, where), (raw.get("llm_config"), f"{where} (llm_config)")):
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise MmmambaError(f"{name}: must be a JSON object")
        for key, ours in HF_KEYS.items():
            _int_field(sub, key, name, LIMITS[ours], optional=True)
        heads, kv = sub.get("num_attention_heads"), sub.get("num_key_value_heads")
        if heads and kv and heads % kv:
            raise MmmambaError(f"{name}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    emb = raw.get("embedding_config")
    if emb is not None:
        if not isinstance(emb, dict):
            raise MmmambaError(f"{where}: embedding_config must be a JSON object")
        for key in ("num_hidden_layers", "hidden_size", "image_size", "patch_size"):
            _int_field(emb, key, f"{where} (embedding_config)", max(LIMITS["num_layers"], 8192), optional=True)


def _shard_names(path: Path) -> list[str]:
    index = path / INDEX
    if index.exists():
        raw = read_json(index, "safetensors index")
        weight_map = raw.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MmmambaError(f"{index}: has no 'weight_map' object; re-save the checkpoint")
        names = set()
        for tensor, fname in weight_map.items():
            if not isinstance(fname, str) or not fname:
                raise MmmambaError(f"{index}: tensor {tensor!r} maps to {json.dumps(fname)}, not a file name")
            if Path(fname).name != fname or fname in (".", ".."):
                raise MmmambaError(f"{index}: shard {fname!r} lies outside the folder; put shards beside the index")
            names.add(fname)
        return sorted(names)
    if (path / WEIGHTS).exists():
        return [WEIGHTS]
    return sorted(p.name for p in path.glob("*.safetensors"))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder, from ``model.safetensors`` or the shards its index names."""
    path = Path(path)
    files = _shard_names(path)
    if not files:
        raise MmmambaError(f"{path}: no *.safetensors weights found; copy the weight files into the folder")
    total = 0
    for fname in files:
        f = path / fname
        if f.is_dir():
            raise MmmambaError(f"{f}: is a folder, expected a safetensors file; replace it with the weights")
        if not f.is_file():
            named = f"shard named in {INDEX}" if (path / INDEX).exists() else "the weights file"
            kind = (
                ("a link to something that is not a regular file" if f.exists() else "a dangling link or a link loop")
                if f.is_symlink()
                else "missing"
                if not f.exists()
                else "not a file"
            )
            raise MmmambaError(f"{f}: {named} is {kind}; copy the real file into the folder")
        total += f.stat().st_size
    if total > machine_memory():
        raise MmmambaError(f"{path}: {human_bytes(total)} of weights do not fit in this machine's memory")
    tensors, home = {}, {}
    for fname in files:
        f = path / fname
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    if k in home:  # which copy is meant cannot be told: refuse rather than let the last one win
                        raise MmmambaError(f"{f}: tensor {k!r} is also in {home[k]}; each tensor belongs in one shard")
                    tensors[k], home[k] = st.get_tensor(k), fname
        except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as e:
            reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            listed = manifest_sizes(path).get(fname)
            if listed is not None and listed != f.stat().st_size:
                reason += f"; {f.stat().st_size} bytes where {listed} were written, so the copy is truncated"
            raise MmmambaError(f"{f}: unreadable safetensors file ({reason}); re-download or re-save it") from None
    return tensors


def _all_finite(t: torch.Tensor) -> bool:
    plain = t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return bool(torch.isfinite(t if plain else t.float()).all())  # float8 and the like: checked as float32


def load_state_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Copy ``tensors`` into ``model``; every parameter must be present with the right shape and kind."""
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
        if param.is_floating_point() and not tensors[name].is_floating_point():
            raise MmmambaError(
                f"{source}: tensor {name!r} is {str(tensors[name].dtype).replace('torch.', '')}, the model needs "
                "floating point; the weights are not a model's"
            )
        if param.is_floating_point() and not _all_finite(tensors[name]):
            raise MmmambaError(
                f"{source}: tensor {name!r} holds NaN or Inf; the weights are damaged, so re-download or re-save them"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise MmmambaError(f"{source}: unexpected tensor(s) {unexpected[:5]}; the config does not match the weights")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name])


def read_model_config(path) -> tuple[dict, bool]:
    """config.json of a checkpoint folder, validated: (raw dict without 'format', is_mmmamba)."""
    path = Path(path)
    recover_for_reading(path)  # a reader: renames a swapped-out folder back, deletes nothing
    raw = read_config_json(path)
    where = f"{path}/config.json"
    fmt = raw.pop("format", None)
    if fmt == FORMAT:
        check_config_dict(raw, where)
        return raw, True
    if "architectures" in raw:
        if not isinstance(raw["architectures"], list) or not raw["architectures"]:
            raise MmmambaError(f"{where}: architectures must be a non-empty list of names")
        check_hf_dict(raw, where)
        return raw, False
    if raw.get("model_type") in ("mmMamba_chat", "internvl_chat"):  # released folders may omit architectures
        check_hf_dict(raw, where)
        return raw, False
    raise MmmambaError(f"{where}: neither an mmmamba nor a Hugging Face checkpoint")


def is_gguf_file(path) -> bool:
    """A llama.cpp ``.gguf`` file, accepted wherever a model folder is (read by ``gguf.py``)."""
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def config_from_dict(raw: dict, where) -> DecoderConfig:
    """DecoderConfig of a checked config.json; its own errors are prefixed with the file they came from."""
    try:
        cfg = DecoderConfig.from_dict(raw)
    except MmmambaError as e:
        fix = "" if ";" in str(e) else "; fix the config"
        raise MmmambaError(str(e) if str(where) in str(e) else f"{where}: {e}{fix}") from None
    check_fits(cfg, where)
    return cfg


MODEL_FILE_NAMES = {
    "config.json", MANIFEST, INDEX, "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
    "merges.txt", "generation_config.json", "preprocessor_config.json", "chat_template.json", "chat_template.jinja",
}  # fmt: skip
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".model", ".tiktoken", ".py", ".gguf")


def checkpoint_files(path) -> list[Path]:
    """The files loading a model reads: a ``.gguf`` file itself, or a folder's config, weights, manifest and
    tokenizer files (not what else lies beside them, such as an eval JSON written there)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []
    return [
        f
        for f in p.iterdir()
        if f.is_file()
        and (f.name in MODEL_FILE_NAMES or f.name.startswith("tokenizer") or f.name.endswith(MODEL_FILE_SUFFIXES))
    ]
