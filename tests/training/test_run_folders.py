"""Outputs never replace a command's inputs; one writer per run folder; the writer (only) cleans up."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.errors import MmmambaError
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.io import CommandInputs, RunLock, command_inputs, recover_for_reading, write_text_atomic
from mmmamba.models import Decoder, DecoderConfig, VisionConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_suite(root / "data", seed=1, sizes={"train": 4, "val": 1, "test": 1})
    make_suite(root / "data2", seed=2, sizes={"train": 4, "val": 1, "test": 1})
    tok = ByteTokenizer(image_tokens=16)
    torch.manual_seed(0)
    vision = VisionConfig(32, 8, 3)
    cfg = DecoderConfig(tok.vocab_size, 32, 2, 4, 2, 8, 64, max_position=1024, vision=vision, image_token_id=261)
    teacher = Decoder(cfg)
    save_checkpoint(teacher, root / "teacher", extra=tok.save)
    save_checkpoint(convert_to_mamba(teacher, []), root / "student", extra=tok.save)
    (root / "eval.json").write_text(json.dumps({"mean_accuracy": 0.5, "per_family": {"a": 0.5}, "n": 2}))
    (root / "result.json").write_text(
        json.dumps({"name": "linear", "group": "headline", "mean_accuracy": 0.25, "per_family": {"a": 0.25}})
    )
    (root / "prompts.txt").write_text("hello\nworld\n")
    return root


def digest(*folders) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            h.update(str(f).encode())
            if f.is_file():
                h.update(f.read_bytes())
    return h.hexdigest()


def refused(argv, capsys, *watch) -> str:
    """Runs ``argv``; asserts exit code 2, one line on stderr, and every watched folder byte-for-byte unchanged."""
    before = digest(*watch)
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert digest(*watch) == before
    return err


EVAL = ["eval", "--model", "{T}", "--data", "{D}", "--limit", "1"]


def fill(argv, root):
    return [a.format(T=root / "teacher", D=root / "data", S=root / "student", R=root) for a in argv]


@pytest.mark.parametrize(
    "extra",
    [
        ["--json", "{D}/test.jsonl"],
        ["--answers", "{T}/config.json"],
        ["--json", "{T}/tokenizer.json"],
        ["--json", "{T}/model.safetensors"],
        ["--answers", "{D}/../data/test.jsonl"],  # a path with ..
        ["--json", "{R}/x.json", "--answers", "{R}/x.json"],  # two outputs, one file
    ],
)
def test_eval_outputs_never_replace_inputs(world, capsys, extra):
    err = refused(fill(EVAL + extra, world), capsys, world / "teacher", world / "data")
    assert err.startswith("mmmamba eval: error:")


def test_eval_output_through_a_symlink_or_hard_link_is_refused(world, tmp_path, capsys, monkeypatch):
    (tmp_path / "link.json").symlink_to(world / "teacher" / "config.json")
    os.link(world / "data" / "test.jsonl", tmp_path / "hard.jsonl")
    monkeypatch.chdir(tmp_path)  # restored after the test: later tests use paths relative to the checkout
    for out in ("link.json", "hard.jsonl"):  # relative paths too
        err = refused(fill(EVAL, world) + ["--json", out], capsys, world / "teacher", world / "data")
        assert "reads" in err


def test_an_eval_json_beside_the_model_is_written_and_rewritten(world, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for f in (world / "teacher").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    argv = ["eval", "--model", model, "--data", world / "data", "--limit", "1", "--json", model / "test_eval.json"]
    assert main([str(a) for a in argv]) == 0
    assert main([str(a) for a in argv]) == 0  # a rerun replaces its own earlier output


def test_report_outputs_never_replace_its_inputs(world, capsys):
    base = ["report", "--runs", world / "result.json", "--teacher-eval", world / "eval.json"]
    refused(base + ["--out", world / "eval.json"], capsys, world)
    refused(base + ["--out", world / "r.md", "--quality", world / "result.json"], capsys, world)
    refused(base + ["--out", world / "r.md", "--chart", world / "r.md"], capsys, world)


def test_report_side_outputs_default_beside_out(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sub" / "R.md"
    args = ["report", "--runs", world / "result.json", "--teacher-eval", world / "eval.json", "--out", out]
    assert main([str(a) for a in args]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["R.md", "R_chart.png", "R_quality.json"]
    assert not (tmp_path / "results").exists()


def test_self_distill_never_overwrites_its_prompts(world, tmp_path, capsys):
    out = tmp_path / "sd"
    out.mkdir()
    (out / "train.jsonl").write_text("hello\n")
    argv = ["data", "self-distill", "--teacher", world / "teacher", "--prompts", out / "train.jsonl", "--out", out]
    refused(argv, capsys, out, world / "teacher")


def test_teacher_train_refuses_a_finished_model_folder(world, tmp_path, capsys):
    folder = tmp_path / "finished"
    folder.mkdir()
    for f in (world / "teacher").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    err = refused(["teacher", "train", "--data", world / "data", "--out", folder, "--steps", "2"], capsys, folder)
    assert "finished" in err


def test_the_writer_refuses_an_input_whatever_the_caller_checked(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("keep me")
    with command_inputs() as reads:
        reads.add_file(f, "--data")
        with pytest.raises(MmmambaError, match="reads"):
            write_text_atomic(tmp_path / "." / "in.txt", "lost")
    assert f.read_text() == "keep me"
    write_text_atomic(f, "outside a command there is nothing registered")


def test_inputs_resolve_symlinked_folders(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.json").write_text("{}")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    reads = CommandInputs()
    reads.add_file(tmp_path / "alias" / "a.json", "--x")
    assert reads.reader_of(tmp_path / "real" / "a.json") == "--x"
    assert reads.reader_of(tmp_path / "real" / "b.json") is None


# ---- one writer per run folder ----


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    code = (
        "import sys, time; from mmmamba.io import RunLock\n"
        "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MmmambaError, match=f"PID {holder.pid}"):
            RunLock(tmp_path / "run").acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path / "run"):  # the lock dies with its holder
        pass


def test_distill_refuses_a_second_writer(world, tmp_path, capsys):
    run = tmp_path / "run"
    code = "import sys, time; from mmmamba.io import RunLock\nRunLock(sys.argv[1]).acquire(); print('x', flush=True)\n"
    code += "time.sleep(30)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        argv = ["distill", "--teacher", world / "teacher", "--student", world / "student", "--data", world / "data"]
        argv += ["--out", run, "--stages", "1", "--steps-per-stage", "1", "--batch-size", "2"]
        err = refused(argv, capsys, run)
        assert f"PID {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def distill_args(world, run, data):
    argv = ["distill", "--teacher", world / "teacher", "--student", world / "student", "--data", data]
    return [str(a) for a in argv + ["--out", run, "--stages", "1,2", "--steps-per-stage", "1", "--batch-size", "2"]]


def test_a_resume_with_other_data_is_refused(world, tmp_path, capsys, monkeypatch):
    from mmmamba.training import run as run_folder

    run = tmp_path / "run"
    real = run_folder.save_checkpoint

    def killed_before_stage_2(model, path, *a, **k):
        if path.name == "after_stage2":
            raise KeyboardInterrupt
        return real(model, path, *a, **k)

    monkeypatch.setattr(run_folder, "save_checkpoint", killed_before_stage_2)
    assert main(distill_args(world, run, world / "data")) == 130
    monkeypatch.undo()
    err = refused(distill_args(world, run, world / "data2"), capsys, run)
    assert "other data" in err
    assert main(distill_args(world, run, world / "data")) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(distill_args(world, run, world / "data")) == 0  # finished: says so, writes nothing
    out = capsys.readouterr()
    assert "finished already" in out.err + out.out and "wrote" not in out.out


def test_the_next_writer_removes_stale_temporaries(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".train_state.pt.tmp-0123abcd", run / ".loss.png.tmp-89ab0123", run / ".after_stage1.tmp-deadbeef"]
    stale[0].write_bytes(b"half a state")
    stale[1].write_bytes(b"half a plot")
    stale[2].mkdir()
    (run / "log.csv").write_text("kept\n")
    with RunLock(run):
        assert not any(p.exists() for p in stale)
    assert (run / "log.csv").read_text() == "kept\n"


def test_a_reader_deletes_nothing_even_on_a_read_only_folder(world, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    model = parent / "model"
    model.mkdir()
    for f in (world / "teacher").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    stale = parent / ".model.tmp-0badf00d"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    parent.chmod(0o555)
    try:
        recover_for_reading(model)
        load_checkpoint(model)
        assert stale.is_dir()
        assert main(["info", "--model", str(model)]) == 0
    finally:
        parent.chmod(0o755)
    assert stale.is_dir()


def test_an_interrupted_swap_is_read_back_by_a_reader(world, tmp_path):
    model = tmp_path / ".model.old-12345678"
    model.mkdir()
    for f in (world / "teacher").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    load_checkpoint(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()


def test_lock_leaves_no_folder_when_nothing_was_written(tmp_path):
    lock = RunLock(tmp_path / "fresh").acquire()
    lock.release()
    assert not (tmp_path / "fresh").exists()
    time.sleep(0)
