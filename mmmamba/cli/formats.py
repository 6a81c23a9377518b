"""`mmmamba import gguf|granite-hybrid`, `export`, `info`: checkpoints in and out of other layouts."""

from __future__ import annotations

from pathlib import Path

from ..errors import MmmambaError
from .args import add_overwrite, check_outputs_in, int_in, reads_model, shard_size


def add_import(sub) -> None:
    """``import`` and its formats."""
    p = sub.add_parser("import", help="bring a model in from another format (gguf: a llama.cpp file; granite-hybrid)")
    isub = p.add_subparsers(dest="action", required=True, metavar="FORMAT")
    p = isub.add_parser("gguf", help="dequantize a .gguf file into a checkpoint folder (weights + tokenizer)")
    p.add_argument("file", help="the .gguf file (Llama or Qwen2; F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the weights")
    p.add_argument("--max-shard-size", default="2GB", help="split the safetensors above this size (e.g. 500MB)")
    add_overwrite(p)
    p.set_defaults(func=cmd_import_gguf)
    p = isub.add_parser("granite-hybrid", help="a GraniteMoeHybrid folder (e.g. from `export --format granite-hybrid`)")
    p.add_argument("folder", help="the folder (config.json, safetensors, tokenizer files)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    add_overwrite(p)
    p.set_defaults(func=cmd_import_granite)


def add_info(sub) -> None:
    """``info``."""
    p = sub.add_parser("info", help="summarise a checkpoint: size, layers, which mixers")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.set_defaults(func=cmd_info)


def add_export(sub) -> None:
    """``export``."""
    p = sub.add_parser(
        "export", help="write a model in another layout (mmmamba-official: the released mmMamba; granite-hybrid: "
        "transformers' GraniteMoeHybrid, served by vLLM, SGLang, llama.cpp, MLX)",
    )  # fmt: skip
    p.add_argument("--format", required=True, choices=["mmmamba-official", "granite-hybrid"], help="target layout")
    p.add_argument(
        "--model", required=True,
        help="checkpoint folder (mmmamba-official: a HoVLE-structured model; granite-hybrid: a gate-first text "
        "student)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument(
        "--mamba-expand", type=int_in(1, 64), default=None,
        help="granite-hybrid: pad each Mamba-2 mixer with zero heads to expand × hidden channels (exact; llama.cpp "
        "needs 2). Default: the smallest that holds the heads",
    )  # fmt: skip
    add_overwrite(p)
    p.set_defaults(func=cmd_export)


def cmd_import_gguf(args) -> None:
    import torch

    from ..formats.gguf import import_gguf, open_gguf
    from ..io import check_checkpoint_output, check_free_space, check_new_output, human_bytes, same_or_inside

    reads_model("file", args.file)
    out = check_checkpoint_output(args.out)
    if same_or_inside(args.file, out):
        raise MmmambaError(f"--out {out} is or contains {args.file}; write the checkpoint to a new folder")
    check_new_output(out, "--out", args.overwrite, "checkpoint")
    open_gguf(args.file)  # a missing or foreign file is refused before any work
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    check_free_space(out, 8 * Path(args.file).stat().st_size * dtype.itemsize, "the dequantized checkpoint")
    model = import_gguf(args.file, out, dtype, shard_size(args.max_shard_size), replace=args.overwrite)
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    print(
        f"wrote {out}: {model.config.conversion['source']} {n / 1e6:.1f} M parameters, {model.config.num_layers} "
        f"layers, dequantized to {args.dtype} ({human_bytes(size)}), tokenizer and chat template from the file"
    )


def cmd_import_granite(args) -> None:
    from ..formats import save_checkpoint
    from ..formats.checkpoint import read_model_config
    from ..formats.granite import ARCH, granite_decoder_config, load_granite
    from ..io import check_checkpoint_output, check_new_output, overlap

    out = check_checkpoint_output(args.out)
    what = overlap(out, args.folder)
    if what is not None:
        raise MmmambaError(f"--out {out} {what} {args.folder}; write the checkpoint to a new folder")
    check_new_output(out, "--out", args.overwrite, "checkpoint")
    raw, ours = read_model_config(args.folder)
    if ours or raw.get("architectures") != [ARCH]:
        raise MmmambaError(f"{args.folder}: not a {ARCH} folder (its config.json names another architecture)")
    from ..data.tokenizer import copy_tokenizer

    granite_decoder_config(raw, f"{Path(args.folder) / 'config.json'}")  # the config first: its errors name it
    _check_tokenizer_loads(args.folder)  # copied as it is: a broken one is refused here, not later
    model = load_granite(args.folder, raw)
    save_checkpoint(model, out, extra=lambda d: copy_tokenizer(args.folder, d), replace=args.overwrite)
    kinds = " ".join("A" if k == "attention" else "M" for k in model.config.mixers)
    print(f"wrote {out}: {args.folder} ({kinds}; A attention, M Mamba-2 gate-first)")


def _check_tokenizer_loads(folder) -> None:
    from ..data.tokenizer import load_tokenizer

    try:
        load_tokenizer(folder)
    except MmmambaError:
        raise
    except Exception as e:  # transformers' own errors on a malformed tokenizer file
        detail = " ".join(str(e).split())[:200]
        raise MmmambaError(
            f"{folder}: its tokenizer files do not load ({type(e).__name__}: {detail}); copy working ones in"
        ) from None


def cmd_info(args) -> None:
    for line in info_lines(args.model):
        print(line)


def info_lines(path) -> list[str]:
    """A checkpoint in a few readable lines: size and dtype, layers and mixers, attention and Mamba-2 shapes,
    the decode cache, the image front-end, how it was converted."""
    from ..formats import load_checkpoint
    from ..formats.checkpoint import checkpoint_files
    from ..io import human_bytes
    from ..models.sizing import cache_bytes

    model = load_checkpoint(path)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    files = checkpoint_files(path)
    disk = sum(f.stat().st_size for f in files)
    n_attn, n_mamba = cfg.mixers.count("attention"), cfg.mixers.count("mamba2")
    kind = "Transformer" if not n_mamba else "linear (Mamba-2)" if not n_attn else "hybrid"
    lines = [
        f"{path}: {kind}, {n / 1e6:.2f} M parameters, {'/'.join(dtypes)}, {human_bytes(disk)} on disk "
        f"({len(files)} files)",
        f"  layers      {cfg.num_layers}: " + " ".join("A" if k == "attention" else "M" for k in cfg.mixers)
        + f"  ({n_attn} attention, {n_mamba} Mamba-2)",
        f"  shape       hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
        f"max_position {cfg.max_position}",
        f"  attention   heads {cfg.num_heads} q / {cfg.num_kv_heads} kv, head_dim {cfg.head_dim}, "
        f"rope_theta {cfg.rope_theta:g}",
    ]  # fmt: skip
    if n_mamba:
        m = cfg.mamba2_config()
        state = cfg.num_heads * cfg.head_dim * cfg.head_dim
        lines.append(
            f"  Mamba-2     state {cfg.num_heads} heads x {cfg.head_dim} x {cfg.head_dim} = {state} values a layer "
            f"({human_bytes(4 * state)} in float32), conv kernel {m.conv_kernel}, scan chunk {m.chunk_size}"
        )
    lines.append(
        f"  decode cache (batch 1): {human_bytes(cache_bytes(cfg, 1, 1))} at 1 token, "
        f"{human_bytes(cache_bytes(cfg, 1, cfg.max_position))} at max_position (float32)"
    )
    if cfg.vision is not None:
        v = cfg.vision
        lines.append(
            f"  vision      {v.image_size}-pixel tiles, {v.patch_size}-pixel patches, {v.tokens_per_tile} tokens a "
            f"tile, up to {v.max_tiles} tiles"
        )
    print("mixers: " + " ".join("A" if k == "attention" else "M" for k in cfg.mixers) + "  (A attention, M Mamba-2)")
    for group in cfg.layer_overrides:  # layers configured apart from the defaults above (e.g. HoVLE's holistic stack)
        own = ", ".join(f"{k} {v}" for k, v in group.items() if k != "layers")
        print(f"layers {group['layers'][0]}-{group['layers'][-1]}: {own}")
    if cfg.conversion:
        lines.append("  conversion  " + ", ".join(f"{k} {v}" for k, v in cfg.conversion.items()))
    return lines


def cmd_export(args) -> None:
    from ..data.tokenizer import TOKENIZER_FILES, copy_tokenizer
    from ..formats import load_checkpoint
    from ..io import check_checkpoint_output, check_new_output, same_or_inside

    reads_model("--model", args.model)
    out = check_checkpoint_output(args.out)
    if same_or_inside(out, args.model):
        raise MmmambaError(f"--out {out}: inside the model folder {args.model}; write the export elsewhere")
    check_new_output(out, "--out", args.overwrite, "export")
    check_outputs_in(out, ["config.json", "model.safetensors", *TOKENIZER_FILES])
    if args.mamba_expand is not None and args.format != "granite-hybrid":
        raise MmmambaError(f"--mamba-expand {args.mamba_expand}: only for --format granite-hybrid; drop it")
    model = load_checkpoint(args.model)
    if args.format == "granite-hybrid":
        from ..data.granite_tokenizer import write_granite_tokenizer
        from ..formats.granite import export_granite

        export_granite(model, out, args.mamba_expand, write_granite_tokenizer(args.model, out))
    else:
        from ..formats.official import export_official

        export_official(model, out)
        copy_tokenizer(args.model, out)
    print(f"wrote {out}: {args.model} in the {args.format} layout")
