"""GGUF files (llama.cpp's format) loaded into our one decoder.

The file is read with the ``gguf`` library (``GGUFReader``: a memory map of the header, the
key/value metadata and the tensors; no code from the file is run). Quantized tensors (Q4_0, Q4_1,
Q8_0, K-quants, …) are dequantized by ``gguf.quants.dequantize`` to float32, then cast to the
requested dtype. Tensor names are mapped by the tables below, as for Hugging Face folders.

llama.cpp stores a Llama's ``attn_q`` / ``attn_k`` rows permuted for its interleaved RoPE
(``convert_hf_to_gguf.py``: ``LlamaModel.permute``, per head the rows ``[0, d/2, 1, d/2+1, …]``);
``unpermute_rope_rows`` undoes it exactly, back to the "rotate half" layout our RoPE uses. Qwen2
files use NEOX RoPE and are stored unpermuted.

The tokenizer and chat template come from the file's ``tokenizer.*`` metadata, converted by
transformers' GGUF tokenizer support (``AutoTokenizer.from_pretrained(dir, gguf_file=…)``).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checks import real, whole
from ..errors import MmmambaError
from ..io import human_bytes, machine_memory
from ..models.config import DecoderConfig
from ..models.decoder import Decoder
from .build import build_loaded
from .hf_families import Family, map_names

GGUF_LAYER = {
    "attn_q": "mixer.q_proj",
    "attn_k": "mixer.k_proj",
    "attn_v": "mixer.v_proj",
    "attn_output": "mixer.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_norm",
    "ffn_norm": "post_norm",
}
GGUF_TOP = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


@dataclass(frozen=True)
class GGUFArch:
    """One ``general.architecture``: its name table, whether q/k rows are RoPE-permuted, q/k/v biases."""

    family: Family
    permuted_qk: bool
    qkv_bias: bool = False


ARCHS = {
    "llama": GGUFArch(Family(GGUF_TOP, (("blk", GGUF_LAYER),), ignored=(r"^rope_freqs\.weight$",)), permuted_qk=True),
    "qwen2": GGUFArch(Family(GGUF_TOP, (("blk", GGUF_LAYER),), qkv_bias=True), permuted_qk=False),
}
# Float types the library reads as they are; every other type must be one gguf can dequantize.
PLAIN_TYPES = ("F32", "F16", "BF16")


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of llama.cpp's ``permute(w, n_head)``: rows (heads, d/2, 2) → (heads, 2, d/2)."""
    rest = w.shape[1:]
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *rest).transpose(1, 2).reshape(w.shape)


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's ``permute`` (HF → GGUF row order), used to write test files."""
    rest = w.shape[1:]
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *rest).transpose(1, 2).reshape(w.shape)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MmmambaError("reading a GGUF file needs the gguf package: pip install 'mmmamba[gguf]'") from None
    return gguf


def open_gguf(path):
    """A ``GGUFReader`` of ``path``; a missing, truncated or foreign file is one line naming it."""
    path = Path(path)
    if path.is_dir():
        raise MmmambaError(f"{path}: is a folder, expected a .gguf file")
    if not path.is_file():
        raise MmmambaError(f"{path}: no such GGUF file; check the path")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise MmmambaError(f"{path}: not a GGUF file (it does not start with 'GGUF'); give a llama.cpp .gguf file")
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path), "r")
    except (ValueError, OSError, IndexError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise MmmambaError(f"{path}: unreadable GGUF file ({reason}); re-download or re-convert it") from None


def metadata(reader) -> dict:
    """Every key/value of the header except the (large) tokenizer arrays, as plain Python values."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "token_type", "merges", "scores")):
            out[key] = len(field.data)  # the count only
            continue
        try:
            out[key] = field.contents()
        except (ValueError, IndexError, TypeError, UnicodeDecodeError):
            out[key] = None
    return out


def _need(meta: dict, key: str, where):
    v = meta.get(key)
    if v is None:
        raise MmmambaError(f"{where}: metadata key {key!r} is missing; the file is incomplete")
    return v


def _bad_metadata(where, e: MmmambaError) -> MmmambaError:
    return MmmambaError(f"{where}: metadata {e}; the file's header is wrong, re-convert it with llama.cpp")


def _count(meta: dict, key: str, where, default=None) -> int:
    """A whole-number metadata value (>= 1), checked before any arithmetic on it."""
    v = meta.get(key, default)
    if v is None:
        raise MmmambaError(f"{where}: metadata key {key!r} is missing; the file is incomplete")
    try:
        return whole(v, key, 1)
    except MmmambaError as e:
        raise _bad_metadata(where, e) from None


def _positive(meta: dict, key: str, where, default=None, high: float | None = None) -> float:
    """A finite metadata number in (0, high]."""
    v = meta.get(key, default)
    if v is None:
        raise MmmambaError(f"{where}: metadata key {key!r} is missing; the file is incomplete")
    try:
        return real(v, key, 0, high, low_open=True)
    except MmmambaError as e:
        raise _bad_metadata(where, e) from None


def _block_indices(names) -> set[int]:
    return {int(m.group(1)) for n in names if (m := re.match(r"blk\.(\d+)\.", n))}


def gguf_config(reader, where) -> tuple[DecoderConfig, GGUFArch, dict]:
    """Our config and the architecture's table, from the header; unsupported settings are refused.

    Every number goes through the checks ``DecoderConfig`` applies (types, ranges, finiteness); the
    block count must match the blocks the tensors hold."""
    meta = metadata(reader)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise MmmambaError(f"{where}: GGUF architecture {arch!r} is not supported; use one of {sorted(ARCHS)}")
    spec = ARCHS[arch]
    a = f"{arch}."
    if meta.get(a + "expert_count"):
        raise MmmambaError(f"{where}: a mixture-of-experts model ({meta[a + 'expert_count']} experts) is not supported")
    scaling = meta.get(a + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise MmmambaError(f"{where}: rope scaling {scaling!r} is not supported; only plain RoPE (freq_base)")
    if isinstance(meta.get(a + "attention.head_count"), list):
        raise MmmambaError(f"{where}: per-layer head counts are not supported")
    hidden = _count(meta, a + "embedding_length", where)
    heads = _count(meta, a + "attention.head_count", where)
    kv = _count(meta, a + "attention.head_count_kv", where, heads)
    head_dim = _count(meta, a + "attention.key_length", where, hidden // heads)
    if _count(meta, a + "attention.value_length", where, head_dim) != head_dim:
        raise MmmambaError(f"{where}: key and value head sizes differ; not supported")
    rope_dims = _count(meta, a + "rope.dimension_count", where, head_dim)
    if rope_dims != head_dim:
        raise MmmambaError(f"{where}: RoPE on {rope_dims} of {head_dim} dimensions (partial rotary) is not supported")
    names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise MmmambaError(f"{where}: no token_embd.weight tensor; not a language model's file")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)  # Llama 3's frequency factors
    if freqs is not None and not bool((dequantize(freqs, where) == 1).all()):
        raise MmmambaError(f"{where}: rope_freqs.weight scales RoPE's frequencies (Llama 3 style RoPE); "
                           "only plain RoPE (freq_base) is supported")  # fmt: skip
    layers = _count(meta, a + "block_count", where)
    blocks = _block_indices(names)
    if blocks != set(range(layers)):
        raise MmmambaError(
            f"{where}: metadata block_count {layers}, but the tensors hold {len(blocks)} block(s); "
            "the file's header is wrong, re-convert it with llama.cpp"
        )
    fields = dict(
        vocab_size=_count(meta, a + "vocab_size", where, int(embed.shape[-1])),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=_count(meta, a + "feed_forward_length", where),
        rope_theta=_positive(meta, a + "rope.freq_base", where, 10000.0),
        norm_eps=_positive(meta, a + "attention.layer_norm_rms_epsilon", where, high=1.0),
        tie_embeddings="output.weight" not in names,
        qkv_bias=spec.qkv_bias,
        max_position=_count(meta, a + "context_length", where, 4096),
    )
    types = sorted({t.tensor_type.name for t in reader.tensors})
    source = {
        "architecture": arch,
        "name": meta.get("general.name"),
        "file_type": meta.get("general.file_type"),
        "tensor_types": types,
    }
    conversion = {"source": f"gguf:{arch}", "stacks": [fields["num_layers"]], "gguf": source}
    try:
        return DecoderConfig(**fields, conversion=conversion), spec, meta
    except MmmambaError as e:
        raise _bad_metadata(where, e) from None


def dequantize(tensor, where) -> torch.Tensor:
    """One ``ReaderTensor`` as a float32 torch tensor in PyTorch's (out, in) order."""
    gguf = _gguf()
    kind = tensor.tensor_type
    shape = tuple(int(s) for s in reversed(tensor.shape))  # GGUF lists the fastest dimension first
    try:
        data = gguf.quants.dequantize(tensor.data, kind)
    except NotImplementedError:
        raise MmmambaError(
            f"{where}: tensor {tensor.name!r} is {kind.name}, which the installed gguf cannot dequantize; "
            "upgrade gguf or re-quantize (Q4_0, Q4_1, Q8_0, F16, BF16, F32 work)"
        ) from None
    data = np.array(data, dtype=np.float32, copy=True)  # plain F32 tensors are read-only views of the file
    if data.size != int(np.prod(shape)):
        raise MmmambaError(f"{where}: tensor {tensor.name!r} holds {data.size} values for shape {shape}; truncated?")
    return torch.from_numpy(data.reshape(shape))


def read_gguf_tensors(reader, cfg: DecoderConfig, spec: GGUFArch, where, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor, dequantized, renamed to ours, q/k rows un-permuted, cast to ``dtype``."""
    from tqdm import tqdm

    names = map_names(spec.family, [t.name for t in reader.tensors], [cfg.num_layers])
    out = {}
    for t in tqdm(reader.tensors, desc="dequantize", unit="tensor", disable=len(reader.tensors) < 64, leave=False):
        if any(re.search(p, t.name) for p in spec.family.ignored):
            continue
        ours = names[t.name]
        if ours is None:
            raise MmmambaError(f"{where}: tensor {t.name!r} has no place in a {cfg.conversion['source']} model")
        w = dequantize(t, where)
        if spec.permuted_qk and ours.endswith(("mixer.q_proj.weight", "mixer.q_proj.bias")):
            w = unpermute_rope_rows(w, cfg.num_heads)
        elif spec.permuted_qk and ours.endswith(("mixer.k_proj.weight", "mixer.k_proj.bias")):
            w = unpermute_rope_rows(w, cfg.num_kv_heads)
        out[ours] = w.to(dtype)
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def load_gguf_decoder(path, dtype: torch.dtype | None = None) -> Decoder:
    """A ``Decoder`` holding the file's weights, dequantized (float32 unless ``dtype`` says otherwise)."""
    path = Path(path)
    reader = open_gguf(path)
    cfg, spec, _ = gguf_config(reader, path)
    dtype = dtype or torch.float32
    need = sum(int(np.prod(t.shape)) for t in reader.tensors) * 4
    if need > machine_memory():
        raise MmmambaError(f"{path}: {human_bytes(need)} once dequantized; more than this machine's memory")
    return build_loaded(cfg, read_gguf_tensors(reader, cfg, spec, path, dtype), path, dtype)


def tokenizer_header(reader, where) -> str:
    """The tokenizer model named in the header (``llama``, ``gpt2``, ...), once its vocabulary is there.

    Only the tokenizer's keys are checked: a vocabulary-only file (llama.cpp ships them under
    ``models/``) holds no weights, and its architecture need not be one we convert."""
    meta = metadata(reader)
    kind = meta.get("tokenizer.ggml.model")
    if not isinstance(kind, str) or not kind:
        raise MmmambaError(
            f"{where}: no tokenizer in its metadata ('tokenizer.ggml.model' is missing); "
            "give a GGUF file converted with its tokenizer"
        )
    if not meta.get("tokenizer.ggml.tokens"):
        raise MmmambaError(f"{where}: its tokenizer has no tokens ('tokenizer.ggml.tokens' is missing or empty)")
    if "tokenizer.chat_template" in reader.fields and not isinstance(meta.get("tokenizer.chat_template"), str):
        raise MmmambaError(f"{where}: 'tokenizer.chat_template' is not text; re-convert the file with its template")
    return kind


def gguf_hf_tokenizer(path, vocab_only: bool = False):
    """The file's tokenizer and chat template as a transformers tokenizer (built from metadata only).

    The header is checked by our rules before transformers reads it: a model file's whole header
    (transformers parses its model keys too), a ``vocab_only`` file's tokenizer keys alone."""
    path = Path(path)
    reader = open_gguf(path)
    tokenizer_header(reader, path)
    if not vocab_only:
        gguf_config(reader, path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MmmambaError("a GGUF file's tokenizer needs transformers: pip install 'mmmamba[gguf]'") from None
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises on a file it cannot read, one line
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise MmmambaError(f"{path}: transformers cannot build a tokenizer from its metadata ({reason})") from None


def write_tokenizer(hf, folder) -> None:
    """Write a transformers tokenizer's files (tokenizer.json, tokenizer_config.json, chat template) into
    ``folder``: transformers writes into a scratch folder, and each file is then moved in atomically."""
    from ..io import write_atomic

    with tempfile.TemporaryDirectory(prefix="mmmamba-gguf-tok-") as scratch:
        hf.save_pretrained(scratch)
        for f in sorted(Path(scratch).iterdir()):
            if f.is_file():
                write_atomic(Path(folder) / f.name, lambda p, f=f: p.write_bytes(f.read_bytes()))


def is_gguf(path) -> bool:
    p = Path(path)
    return p.suffix.lower() == ".gguf" and p.is_file()


def import_gguf(
    path, out, dtype: torch.dtype = torch.float32, max_shard_bytes: int | None = None, replace: bool = True
) -> Decoder:
    """``mmmamba import gguf``: the file as a checkpoint folder (config.json + safetensors + tokenizer).

    The tokenizer is built first (a file transformers cannot read is refused before any dequantizing).
    """
    from .checkpoint import MAX_SHARD_BYTES, save_checkpoint

    hf = gguf_hf_tokenizer(path)
    model = load_gguf_decoder(path, dtype)
    model.config.conversion["gguf"]["file"] = Path(path).name
    save_checkpoint(
        model, out, max_shard_bytes or MAX_SHARD_BYTES, extra=lambda d: write_tokenizer(hf, d), replace=replace
    )
    return model
