"""Issue #12: no crash window loses a run, no command destroys finished work, every bad input is
refused before any work (one line, exit code 2, nothing pre-existing modified)."""

import errno
import hashlib
import json
import os
import shutil
import struct
import time
import zlib

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmmamba
from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer, load_tokenizer
from mmmamba.distill import trainer
from mmmamba.distill.config import DistillConfig
from mmmamba.distill.trainer import distill
from mmmamba.errors import MmmambaError
from mmmamba.formats import checkpoint, load_checkpoint, save_checkpoint
from mmmamba.infer import generate
from mmmamba.models import Decoder, DecoderConfig, VisionConfig
from mmmamba.training import run as run_folder
from mmmamba.training.state import STATE_FILE


def tiny_teacher(tok: ByteTokenizer) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position=1024,
        vision=VisionConfig(32, 8, 3),
        image_token_id=tok.image_token_id,
    )
    return Decoder(cfg)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_config(folder, base: dict, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(base | changes))
    return folder


def data_copy(src, dst, split="val", text=None, raw=None):
    shutil.copytree(src, dst)
    f = dst / f"{split}.jsonl"
    if raw is not None:
        f.write_bytes(raw)
    elif text is not None:
        f.write_text(text)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    make_suite(root / "data", seed=1, sizes={"train": 4, "val": 1, "test": 1})
    tok = ByteTokenizer(image_tokens=16)
    teacher = tiny_teacher(tok)
    save_checkpoint(teacher, root / "teacher", extra=tok.save)
    student = convert_to_mamba(teacher, [1])
    save_checkpoint(student, root / "student", extra=tok.save)
    (root / "file.txt").write_text("not a folder\n")
    base = json.loads((root / "teacher" / "config.json").read_text())
    bad = root / "bad"
    # config.json variants (the weights are never reached)
    (bad / "zero").mkdir(parents=True)
    (bad / "zero" / "config.json").write_bytes(b"")
    (bad / "list").mkdir()
    (bad / "list" / "config.json").write_text("[1, 2]")
    (bad / "nonutf").mkdir()
    (bad / "nonutf" / "config.json").write_bytes(b'{"format": "mmmamba", "x": "\xff\xfe"}')
    (bad / "deep").mkdir()
    (bad / "deep" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (bad / "notjson").mkdir()
    (bad / "notjson" / "config.json").write_text("{format: mmmamba")
    write_config(bad / "str_size", base, hidden_size="32")
    write_config(bad / "float_size", base, hidden_size=32.5)
    write_config(bad / "neg_size", base, num_layers=-3)
    write_config(bad / "zero_size", base, intermediate_size=0)
    write_config(bad / "kv0", base, num_kv_heads=0)
    write_config(bad / "heads", base, num_kv_heads=3)
    write_config(bad / "layers_bomb", base, num_layers=10**6, mixers=[])
    write_config(bad / "hidden_bomb", base, hidden_size=10**9)
    write_config(bad / "vocab_bomb", base, vocab_size=10**12)
    write_config(bad / "conv_bomb", base, mamba={"conv_kernel": 10**8})
    write_config(bad / "position_bomb", base, max_position=10**12)
    write_config(bad / "fits_not", base, vocab_size=4_000_000, hidden_size=65536, intermediate_size=1 << 19)
    write_config(bad / "hf_bomb", {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 10**7})
    # weight-file variants: a full copy of the teacher, then one thing broken
    for name in ("corrupt", "st_dir", "index_notjson", "index_outside", "int_weights", "tok_notjson", "truncated"):
        shutil.copytree(root / "teacher", bad / name)
    (bad / "corrupt" / "model.safetensors").write_bytes(os.urandom(4096))
    (bad / "st_dir" / "model.safetensors").unlink()
    (bad / "st_dir" / "model.safetensors").mkdir()
    (bad / "index_notjson" / "model.safetensors.index.json").write_text("weights? maybe")
    (bad / "index_outside" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"norm.weight": "../../teacher/model.safetensors"}})
    )
    tensors = load_file(bad / "int_weights" / "model.safetensors")
    tensors["norm.weight"] = tensors["norm.weight"].to(torch.int64)
    (bad / "int_weights" / "manifest.json").unlink()
    save_file(tensors, bad / "int_weights" / "model.safetensors")
    (bad / "tok_notjson" / "tokenizer.json").write_text("{{{")
    st = bad / "truncated" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:500])
    # data variants
    good_line = (root / "data" / "val.jsonl").read_text().splitlines()[0]
    rec = json.loads(good_line)
    data_copy(root / "data", bad / "empty_val", text="")
    data_copy(root / "data", bad / "blank_val", text="\n\n   \n")
    data_copy(root / "data", bad / "nonutf_val", raw=good_line.encode() + b"\n\xff\xfe\xfd\n")
    data_copy(root / "data", bad / "badline_val", text=good_line + "\n{not json\n")
    data_copy(root / "data", bad / "deep_val", text="[" * 100_000 + "\n")
    data_copy(root / "data", bad / "list_val", text="[1, 2]\n")
    data_copy(root / "data", bad / "outside_img", text=json.dumps(rec | {"image": "../../data/" + rec["image"]}) + "\n")
    absolute = json.dumps(rec | {"image": str(root / "data" / rec["image"])})
    data_copy(root / "data", bad / "abs_img", text=absolute + "\n")
    data_copy(root / "data", bad / "bomb_img", text=json.dumps(rec | {"image": "bomb.png"}) + "\n")
    (bad / "bomb_img" / "bomb.png").write_bytes(png_header(60000, 60000))
    data_copy(root / "data", bad / "missing_img", text=json.dumps(rec | {"image": "nope.png"}) + "\n")
    data_copy(root / "data", bad / "garbage_img", text=json.dumps(rec | {"image": "g.png"}) + "\n")
    (bad / "garbage_img" / "g.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    data_copy(root / "data", bad / "empty_test", split="test", text="")
    long_q = rec | {"conversations": [{"from": "human", "value": "<image>\n" + "x" * 3000}, rec["conversations"][1]]}
    data_copy(root / "data", bad / "long_val", text=json.dumps(long_q) + "\n")
    # a text-only teacher (image data on it is refused) and a teacher of another shape
    torch.manual_seed(1)
    text_cfg = DecoderConfig(tok.vocab_size, 32, 3, 4, 2, 8, 64)
    save_checkpoint(Decoder(text_cfg), root / "text_teacher", extra=tok.save)
    other = DecoderConfig(tok.vocab_size, 48, 3, 4, 2, 12, 64, vision=VisionConfig(32, 8, 3), image_token_id=261)
    save_checkpoint(convert_to_mamba(Decoder(other), [1]), root / "other_student", extra=tok.save)
    # report inputs
    (root / "eval.json").write_text(json.dumps({"mean_accuracy": 0.5, "per_family": {"a": 0.5}, "n": 2}))
    (root / "res_list.json").write_text("[1]")
    (root / "res_keys.json").write_text(json.dumps({"name": "x", "mean_accuracy": 0.5}))
    (root / "res_notjson.json").write_text("{")
    (root / "res_bad_acc.json").write_text(
        json.dumps({"name": "x", "group": "headline", "mean_accuracy": "high", "per_family": {"a": 1}})
    )
    return root


def digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*")):
        h.update(str(f.relative_to(folder)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


T, S, D, R = "{T}", "{S}", "{D}", "{R}"
GEN = ["generate", "--model", T, "--prompt", "hi"]
EVAL = ["eval", "--model", T, "--data", D]
DIST = ["distill", "--teacher", T, "--student", S, "--data", D, "--out", R + "/new_run", "--steps-per-stage", "1"]
CONV = ["convert", "--teacher", T, "--out", R + "/new_student"]

CASES = {
    # CLI numbers
    "gen_max_new_0": GEN + ["--max-new-tokens", "0"],
    "gen_max_new_neg": GEN + ["--max-new-tokens", "-1"],
    "gen_max_new_text": GEN + ["--max-new-tokens", "many"],
    "gen_max_new_huge": GEN + ["--max-new-tokens", "99999999999999"],
    "gen_temp_neg": GEN + ["--temperature", "-1"],
    "gen_temp_nan": GEN + ["--temperature", "nan"],
    "gen_top_p_0": GEN + ["--top-p", "0"],
    "gen_top_p_2": GEN + ["--top-p", "2"],
    "gen_top_k_neg": GEN + ["--top-k", "-1"],
    "gen_prefill_0": GEN + ["--prefill-chunk", "0"],
    "gen_prefill_nan": GEN + ["--prefill-chunk", "nan"],
    "eval_batch_neg": EVAL + ["--batch-size", "-4"],
    "eval_batch_0": EVAL + ["--batch-size", "0"],
    "eval_limit_0": EVAL + ["--limit", "0"],
    "dist_temp_0": DIST + ["--stages", "3", "--temperature", "0"],
    "dist_temp_inf": DIST + ["--temperature", "inf"],
    "dist_steps_abbrev": DIST + ["--steps", "5"],
    "dist_steps_0": DIST[:-1] + ["0"],
    "dist_steps_neg": DIST[:-1] + ["-1"],
    "dist_steps_text": DIST[:-1] + ["x,y,z"],
    "dist_steps_huge": DIST[:-1] + ["100000000000"],
    "dist_batch_0": DIST + ["--batch-size", "0"],
    "dist_batch_too_big": DIST + ["--batch-size", "10000"],
    "dist_eval_every_0": DIST + ["--eval-every", "0"],
    "dist_val_limit_0": DIST + ["--val-limit", "0"],
    "dist_lr_nan": DIST + ["--lr-scale", "nan"],
    "dist_lr_0": DIST + ["--lr-scale", "0"],
    "dist_stages_4": DIST + ["--stages", "4"],
    "dist_stages_order": DIST + ["--stages", "3,1"],
    "train_steps_0": ["teacher", "train", "--data", D, "--out", R + "/t", "--steps", "0"],
    "train_eval_neg": ["teacher", "train", "--data", D, "--out", R + "/t", "--eval-every", "-1"],
    "make_train_0": ["data", "make", "--out", R + "/s", "--train", "0"],
    "make_val_neg": ["data", "make", "--out", R + "/s", "--val", "-5"],
    "make_recall_0": ["data", "make", "--out", R + "/s", "--recall-images", "0"],
    "make_recall_text": ["data", "make", "--out", R + "/s", "--recall-images", "two"],
    "conv_kernel_0": CONV + ["--conv-kernel", "0"],
    "conv_kernel_bomb": CONV + ["--conv-kernel", "100000000"],
    "conv_shard_0": CONV + ["--max-shard-size", "0"],
    "conv_shard_text": CONV + ["--max-shard-size", "big"],
    "conv_every_neg": CONV + ["--keep-attention", "every:-1"],
    "conv_head_neg": CONV + ["--keep-attention", "head:-1"],
    "conv_every_0": CONV + ["--keep-attention", "every:0"],
    "conv_bad_spec": CONV + ["--keep-attention", "some"],
    # devices
    "gen_device_bogus": GEN + ["--device", "quantum"],
    "gen_device_absent": GEN + ["--device", "cuda:7"],
    "dist_device_bogus": DIST + ["--device", "tpu"],
    # output paths
    "conv_out_teacher": ["convert", "--teacher", T, "--out", T],
    "conv_out_parent": ["convert", "--teacher", T, "--out", R],
    "conv_out_file": ["convert", "--teacher", T, "--out", R + "/file.txt"],
    "conv_out_under_file": ["convert", "--teacher", T, "--out", R + "/file.txt/s"],
    "dist_out_file": DIST[:-4] + ["--out", R + "/file.txt", "--steps-per-stage", "1"],
    "dist_out_under_file": DIST[:-4] + ["--out", R + "/file.txt/run", "--steps-per-stage", "1"],
    "dist_out_teacher": DIST[:-4] + ["--out", T, "--steps-per-stage", "1"],
    "eval_json_dir": EVAL + ["--json", R + "/data"],
    "eval_json_under_file": EVAL + ["--json", R + "/file.txt/x.json"],
    "make_out_file": ["data", "make", "--out", R + "/file.txt"],
    "report_out_dir": ["report", "--runs", R + "/eval.json", "--teacher-eval", R + "/eval.json", "--out", R],
    # missing files, folders where files are expected, files where folders are expected
    "info_missing": ["info", "--model", R + "/nope"],
    "info_file": ["info", "--model", R + "/file.txt"],
    "eval_data_missing": ["eval", "--model", T, "--data", R + "/nope"],
    "eval_data_file": ["eval", "--model", T, "--data", R + "/file.txt"],
    "gen_image_missing": GEN + ["--image", R + "/nope.png"],
    "gen_image_dir": GEN + ["--image", D],
    "gen_image_mark_without_image": ["generate", "--model", T, "--prompt", "<image> what is it?"],
    "gen_image_not_an_image": GEN + ["--image", R + "/file.txt"],
    "train_data_missing": ["teacher", "train", "--data", R + "/nope", "--out", R + "/t"],
    "report_missing": ["report", "--runs", R + "/nope.json", "--teacher-eval", R + "/eval.json", "--out", R + "/r.md"],
    # config.json shapes, encodings and bombs
    **{
        f"info_{name}": ["info", "--model", R + f"/bad/{name}"]
        for name in (
            "zero",
            "list",
            "nonutf",
            "deep",
            "notjson",
            "str_size",
            "float_size",
            "neg_size",
            "zero_size",
            "kv0",
            "heads",
            "layers_bomb",
            "hidden_bomb",
            "vocab_bomb",
            "conv_bomb",
            "position_bomb",
            "fits_not",
            "hf_bomb",
            "corrupt",
            "st_dir",
            "index_notjson",
            "index_outside",
            "int_weights",
            "truncated",
        )
    },
    "conv_layers_bomb": ["convert", "--teacher", R + "/bad/layers_bomb", "--out", R + "/x"],
    "chat_position_bomb": ["chat", "--model", R + "/bad/position_bomb"],
    "gen_tok_notjson": ["generate", "--model", R + "/bad/tok_notjson", "--prompt", "hi"],
    "gen_prompt_nonutf": ["generate", "--model", T, "--prompt", b"\xff\xfe".decode("utf-8", "surrogateescape")],
    # data
    **{
        f"dist_{name}": DIST[:5] + ["--data", R + f"/bad/{name}"] + DIST[7:]
        for name in (
            "empty_val",
            "blank_val",
            "nonutf_val",
            "badline_val",
            "deep_val",
            "list_val",
            "outside_img",
            "abs_img",
            "bomb_img",
            "missing_img",
            "garbage_img",
            "long_val",
        )
    },
    "eval_empty_split": EVAL[:4] + [R + "/bad/empty_test"],
    "eval_text_model_on_images": ["eval", "--model", R + "/text_teacher", "--data", D],
    # mixed pairs
    "dist_student_as_teacher": ["distill", "--teacher", S, "--student", S] + DIST[5:],
    "dist_other_student": ["distill", "--teacher", T, "--student", R + "/other_student"] + DIST[5:],
    "dist_teacher_not_converted": ["distill", "--teacher", T, "--student", T] + DIST[5:],
    "conv_student_as_teacher": ["convert", "--teacher", S, "--out", R + "/x"],
    # report
    **{
        f"report_{name}": ["report", "--runs", R + f"/{name}.json", "--teacher-eval", R + "/eval.json"]
        + ["--out", R + "/r.md", "--chart", R + "/c.png", "--quality", R + "/q.json"]
        for name in ("res_list", "res_keys", "res_notjson", "res_bad_acc")
    },
    "report_teacher_eval_list": ["report", "--runs", R + "/eval.json", "--teacher-eval", R + "/res_list.json"],
    "unknown_option": ["info", "--model", T, "--bogus"],
}


def test_the_corpus_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, name, capsys):
    subs = {T: str(world / "teacher"), S: str(world / "student"), D: str(world / "data"), R: str(world)}
    argv = [a for a in CASES[name]]
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    before = digest(world)
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "expected one argument" not in err  # the case itself is well formed
    assert err and "\n" not in err and "Traceback" not in err, err
    assert elapsed < 5, f"{name} took {elapsed:.1f} s to refuse"
    assert digest(world) == before


def test_messages_name_the_input_and_the_fix(world, capsys):
    expect = {
        "info_st_dir": "is a folder, expected a safetensors file",
        "info_heads": "num_heads 4 is not a multiple of num_kv_heads 3",
        "conv_out_teacher": "is the teacher",
        "dist_temp_0": "temperature",
        "dist_long_val": "val.jsonl:1",
        "dist_empty_val": "val.jsonl: holds no samples",
        "info_zero": "empty config.json",
        "info_int_weights": "int64",
        "dist_outside_img": "--allow-outside-images",
        "dist_bomb_img": "bomb.png",
        "gen_image_mark_without_image": "--image",
        "info_index_outside": "outside the folder",
        "dist_student_as_teacher": "already a converted student",
    }
    subs = {T: str(world / "teacher"), S: str(world / "student"), D: str(world / "data"), R: str(world)}
    for name, fragment in expect.items():
        argv = CASES[name]
        for k, v in subs.items():
            argv = [a.replace(k, v) for a in argv]
        assert main(argv) == 2
        assert fragment in capsys.readouterr().err, name


def test_outside_images_are_read_with_the_flag(world, tmp_path, capsys):
    data = world / "bad" / "outside_img"
    args = ["--teacher", str(world / "teacher"), "--student", str(world / "student"), "--data", str(data)]
    args += ["--out", str(tmp_path / "run"), "--steps-per-stage", "1", "--stages", "1", "--batch-size", "2"]
    assert main(["distill", *args, "--dry-run", "--allow-outside-images"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_convert_dry_run_writes_nothing(world, tmp_path, capsys):
    assert main(["convert", "--teacher", str(world / "teacher"), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "memory" in out and "time" in out
    assert not (tmp_path / "s").exists()


# -- crash windows --------------------------------------------------------------------------------


CFG = DistillConfig(stages=[1, 3], steps={1: 3, 3: 3}, batch_size=4, eval_every=2, val_limit=4)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    model = distill(world / "teacher", world / "student", world / "data", out, CFG, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way catches it."""


def run_to_completion(world, out):
    return distill(world / "teacher", world / "student", world / "data", out, CFG, progress=False)


def assert_same_and_usable(model, reference, out):
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    final = out / "after_stage3"
    tok = load_tokenizer(final)  # the tokenizer is part of the published checkpoint
    loaded = load_checkpoint(final)
    (new,) = generate(loaded, [tok.user_turn("hello")], None, 3, stop_ids=tok.stop_ids, pad_id=tok.pad_id)
    assert 1 <= len(new) <= 3
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def kill_on_call(monkeypatch, target, name, n=1, after=False):
    """Make the ``n``-th call of ``target.name`` die (before it runs, or right after it returned)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == n and not after:
            raise Killed(name)
        result = real(*a, **k)
        if calls["n"] == n and after:
            raise Killed(name)
        return result

    monkeypatch.setattr(target, name, wrapper)


KILL_POINTS = {
    # inside the stage-end save: weights written, nothing published
    "save_file_first": (checkpoint, "save_file", 1, False),
    "tokenizer_copy": (trainer, "copy_tokenizer", 1, False),
    "manifest_then_publish": (mmmamba.io, "publish_dir", 1, False),
    # right after the stage marker appeared, before train_state.pt is removed
    "after_stage1_marker": (run_folder, "save_checkpoint", 1, True),
    "after_stage3_marker": (run_folder, "save_checkpoint", 2, True),
    # after the state was removed, before the loss plot
    "plot_after_stage1": (trainer, "plot_losses", 1, False),
    # inside a training-state save
    "save_state_first": (trainer, "save_state", 1, False),
    "save_state_in_stage3": (trainer, "save_state", 3, False),
    "distill_config_write": (run_folder, "write_json_atomic", 1, False),
    "log_truncate": (run_folder.RunLog, "truncate", 2, False),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_kill_at_any_point_resumes_bit_exactly(world, reference, tmp_path, monkeypatch, point):
    target, name, n, after = KILL_POINTS[point]
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        kill_on_call(m, target, name, n, after)
        with pytest.raises(Killed):
            run_to_completion(world, out)
    assert_same_and_usable(run_to_completion(world, out), reference, out)


@pytest.mark.parametrize("stop", [1, 2, 3, 4, 5])
def test_stops_at_any_step_resume_bit_exactly(world, reference, tmp_path, stop):
    out = tmp_path / "run"
    distill(world / "teacher", world / "student", world / "data", out, CFG, stop_after=stop, progress=False)
    assert_same_and_usable(run_to_completion(world, out), reference, out)


def test_stale_state_of_a_finished_stage_is_explained_and_removed(world, reference, tmp_path, capsys):
    out = tmp_path / "run"
    run_to_completion(world, out)
    shutil.copy(out / "after_stage1" / "model.safetensors", tmp_path / "keep")
    # a state of stage 1 (finished) next to its checkpoint: what the old crash window left
    cfg1 = DistillConfig(**{**CFG.__dict__, "stages": [1], "steps": {1: 3}})
    distill(world / "teacher", world / "student", world / "data", tmp_path / "s1", cfg1, stop_after=2, progress=False)
    shutil.copy(tmp_path / "s1" / STATE_FILE, out / STATE_FILE)
    shutil.rmtree(out / "after_stage3")
    model = run_to_completion(world, out)
    assert "left over from finished stage 1" in "".join(capsys.readouterr())
    assert_same_and_usable(model, reference, out)


def test_zero_byte_settings_file(world, reference, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "distill_config.json").write_bytes(b"")  # nothing else there: nothing to protect, rewritten
    run_to_completion(world, out)
    (out / "distill_config.json").write_bytes(b"")  # now with finished work beside it: refused, work kept
    before = digest(out / "after_stage3")
    args = ["--teacher", str(world / "teacher"), "--student", str(world / "student"), "--data", str(world / "data")]
    assert main(["distill", *args, "--out", str(out), "--stages", "1,3", "--steps-per-stage", "3"]) == 2
    assert "distill_config.json: empty" in capsys.readouterr().err
    assert digest(out / "after_stage3") == before


def test_rerun_with_other_settings_names_them(world, tmp_path):
    out = tmp_path / "run"
    distill(world / "teacher", world / "student", world / "data", out, CFG, stop_after=1, progress=False)
    other = DistillConfig(**{**CFG.__dict__, "lr_scale": 2.0})
    with pytest.raises(MmmambaError, match="lr_scale differ"):
        distill(world / "teacher", world / "student", world / "data", out, other, progress=False)


# -- finished work is never destroyed -------------------------------------------------------------


def test_disk_full_while_resaving_keeps_the_old_checkpoint(world, tmp_path, monkeypatch, capsys):
    shutil.copytree(world / "teacher", tmp_path / "ckpt")
    before = digest(tmp_path / "ckpt")
    model = load_checkpoint(tmp_path / "ckpt")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(MmmambaError, match="disk full") as e:
        save_checkpoint(model, tmp_path / "ckpt")
    assert "\n" not in str(e.value)
    assert digest(tmp_path / "ckpt") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind
    # through the CLI: convert into an existing student folder on a full disk
    shutil.copytree(world / "student", tmp_path / "student")
    before = digest(tmp_path / "student")
    argv = ["convert", "--teacher", str(world / "teacher"), "--out", str(tmp_path / "student"), "--overwrite"]
    assert main(argv) == 2
    assert "disk full" in capsys.readouterr().err
    assert digest(tmp_path / "student") == before


def test_torch_enforce_fail_counts_as_disk_full(world, tmp_path, monkeypatch):
    model = load_checkpoint(world / "student")

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    from mmmamba.training.optim import make_adamw
    from mmmamba.training.state import save_state

    opt = make_adamw(model.named_parameters(), mmmamba.training.optim.OptimConfig())
    with pytest.raises(MmmambaError, match="disk full"):
        save_state(tmp_path, model, opt, 1)
    assert list(tmp_path.iterdir()) == []


def test_resave_keeps_foreign_files_and_drops_stale_shards(world, tmp_path):
    model = load_checkpoint(world / "teacher")
    save_checkpoint(model, tmp_path / "c", max_shard_bytes=20_000)
    (tmp_path / "c" / "train_log.csv").write_text("step\n1\n")
    save_checkpoint(model, tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["config.json", "manifest.json", "model.safetensors", "train_log.csv"]
    assert oct((tmp_path / "c" / "model.safetensors").stat().st_mode & 0o777) != "0o600"


def test_an_interrupted_swap_is_undone(world, tmp_path, monkeypatch):
    shutil.copytree(world / "teacher", tmp_path / "c")
    before = digest(tmp_path / "c")
    real = os.rename
    calls = {"n": 0}

    def second_rename_dies(a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed("between the renames")
        return real(a, b)

    monkeypatch.setattr(os, "rename", second_rename_dies)
    with pytest.raises(Killed):
        save_checkpoint(load_checkpoint(tmp_path / "c"), tmp_path / "c")
    monkeypatch.setattr(os, "rename", real)
    assert not (tmp_path / "c").exists()  # the kill left the old copy aside
    load_checkpoint(tmp_path / "c")  # ... and the next reader puts it back
    assert digest(tmp_path / "c") == before


# -- non-finite training --------------------------------------------------------------------------


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(world, tmp_path, monkeypatch, capsys):
    real = trainer.stage_loss
    calls = {"n": 0}

    def sometimes_nan(stage, teacher, student, batch):
        loss = real(stage, teacher, student, batch)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] in (2, 5) and student.training else loss

    monkeypatch.setattr(trainer, "stage_loss", sometimes_nan)
    model = run_to_completion(world, tmp_path / "ok")
    assert "skipped for a non-finite loss" in "".join(capsys.readouterr())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())

    monkeypatch.setattr(trainer, "stage_loss", lambda *a: real(*a) * float("nan"))
    cfg = DistillConfig(**{**CFG.__dict__, "max_bad_steps": 2})
    with pytest.raises(MmmambaError, match=r"stage 1, step 2: 2 non-finite .* last good checkpoint is .*student"):
        distill(world / "teacher", world / "student", world / "data", tmp_path / "bad", cfg, progress=False)
    assert not (tmp_path / "bad" / "after_stage1").exists()


def test_a_non_finite_tensor_is_never_saved(world, tmp_path):
    model = load_checkpoint(world / "teacher")
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    with pytest.raises(MmmambaError, match="NaN"):
        save_checkpoint(model, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_temperature_zero_is_refused_by_the_api_too(world, tmp_path):
    cfg = DistillConfig(stages=[3], steps={3: 2}, temperature=0.0)
    with pytest.raises(MmmambaError, match="temperature"):
        distill(world / "teacher", world / "student", world / "data", tmp_path / "r", cfg)
    assert not (tmp_path / "r").exists()


def test_teacher_train_steps_zero_is_not_the_default(world, tmp_path):
    from mmmamba.teacher.train import train_teacher

    with pytest.raises(MmmambaError, match="--steps 0"):
        train_teacher("tiny", world / "data", tmp_path / "t", steps=0)


def test_sigkill_of_a_distill_process_resumes_bit_exactly(world, reference, tmp_path):
    """Real SIGKILLs of `mmmamba distill`: when the stage-1 marker appears, inside stage 3, at a random moment."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = [sys.executable, "-c", "import sys; from mmmamba.cli.main import main; sys.exit(main(sys.argv[1:]))"]
    argv += ["distill", "--teacher", str(world / "teacher"), "--student", str(world / "student")]
    argv += ["--data", str(world / "data"), "--out", str(out), "--stages", "1,3", "--steps-per-stage", "3"]
    argv += ["--batch-size", "4", "--eval-every", "2", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(os.getcwd())}

    def kill_when(ready, deadline=60.0):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while proc.poll() is None and not ready() and time.time() - t0 < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    kill_when(lambda: (out / "after_stage1").exists())
    kill_when(lambda: (out / STATE_FILE).exists())
    start = time.time()
    kill_when(lambda: time.time() - start > 2.5)
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    final = load_checkpoint(out / "after_stage3")
    for k, v in final.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert load_tokenizer(out / "after_stage3").end_id is not None


def test_an_atomic_write_makes_missing_parent_folders(tmp_path):
    from mmmamba.io import write_json_atomic

    target = tmp_path / "new" / "deeper" / "out.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temporary file left beside it


def test_eval_answers_lists_every_sample_with_its_reference_answer_and_verdict(world, tmp_path, capsys):
    answers, report = tmp_path / "new" / "answers.jsonl", tmp_path / "report.json"
    main(["eval", "--model", str(world / "teacher"), "--data", str(world / "data"), "--split", "test",
          "--answers", str(answers), "--json", str(report)])  # fmt: skip
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    samples = [json.loads(line) for line in (world / "data" / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [s["id"] for s in samples]
    for r, s in zip(records, samples):
        assert r["reference"] == s["conversations"][1]["value"]
        assert r["correct"] == (r["answer"].strip() == r["reference"].strip())
    scored = json.loads(report.read_text())
    assert "answers" not in scored  # the report keeps its shape
    by_family = {}
    for r in records:
        by_family.setdefault(r["family"], []).append(r["correct"])
    assert scored["per_family"] == pytest.approx({f: sum(v) / len(v) for f, v in by_family.items()})


def test_eval_answers_is_refused_on_a_text_corpus_before_any_work(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.json").write_text("{}")  # what marks a `data text` folder
    argv = ["eval", "--model", "models/tiny-teacher", "--data", str(tmp_path / "corpus"),
            "--answers", str(tmp_path / "a.jsonl")]  # fmt: skip
    assert main(argv) == 2 and not (tmp_path / "a.jsonl").exists()


def test_convert_auto_rank_is_recorded_with_auto_and_refused_without(world, tmp_path):
    t = str(world / "teacher")
    assert main(["convert", "--teacher", t, "--keep-attention", "every:2", "--auto-rank", "relative",
                 "--out", str(tmp_path / "a")]) == 2  # fmt: skip
    assert not (tmp_path / "a").exists()
    for rank, want in ((None, "error"), ("relative", "relative")):
        out = tmp_path / f"b_{want}"
        argv = ["convert", "--teacher", t, "--keep-attention", "auto:1", "--out", str(out)]
        assert main(argv + (["--auto-rank", rank] if rank else [])) in (0, None)
        conversion = json.loads((out / "config.json").read_text())["conversion"]
        assert conversion["auto_keep"] == 1 and conversion["auto_rank"] == want


def test_distill_refuses_an_unknown_auto_rank_before_any_step(world, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(world / "student", student)
    cfg = json.loads((student / "config.json").read_text())
    cfg["conversion"] |= {"auto_keep": 1, "auto_rank": "loudest"}
    (student / "config.json").write_text(json.dumps(cfg))
    argv = ["distill", "--teacher", str(world / "teacher"), "--student", str(student), "--data", str(world / "data"),
            "--out", str(tmp_path / "run"), "--steps-per-stage", "1"]  # fmt: skip
    assert main(argv) == 2 and not (tmp_path / "run").exists()
