"""Inputs a distillation, an evaluation or a report reads, refused in one line before any work: a folder
that is no run, a run that lost its settings, the same folder spelled another way, a corpus of another
tokenizer, windows too short to predict from, link loops, names the system refuses."""

import json
import os
import shutil

import pytest

from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.formats import save_checkpoint
from tests.cli.test_reliability import tiny_teacher
from tests.formats.hf_folders import write_tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    make_suite(root / "data", seed=1, sizes={"train": 4, "val": 1, "test": 1})
    tok = ByteTokenizer(image_tokens=16)
    teacher = tiny_teacher(tok)
    save_checkpoint(teacher, root / "teacher", extra=tok.save)
    save_checkpoint(convert_to_mamba(teacher, [1]), root / "student", extra=tok.save)
    text = root / "text"  # a text corpus of the teacher's tokenizer, written as `data text` writes one
    text.mkdir()
    ids = [[tok.bos_id, *range(10, 40)] for _ in range(8)]
    for split in ("train", "val", "test"):
        (text / f"{split}.jsonl").write_text("".join(json.dumps({"input_ids": i, "text": ""}) + "\n" for i in ids))
    info = {"format": "mmmamba-text-corpus", "vocab_size": tok.vocab_size, "seq_len": 64}
    (text / "corpus.json").write_text(json.dumps(info))
    return root


def distill_args(world, out, *extra, teacher=None, student=None, data=None):
    return ["distill", "--teacher", str(teacher or world / "teacher"), "--student", str(student or world / "student"),
            "--data", str(data or world / "data"), "--out", str(out), "--stages", "1", "--steps-per-stage", "1",
            "--batch-size", "2", "--device", "cpu", *extra]  # fmt: skip


def refused(capsys, args, *words, after_steps=False):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    if after_steps:  # the progress bars of the steps taken come first
        err = err.splitlines()[-1]
    assert "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_a_folder_that_is_no_run_is_not_written_into(world, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.csv").write_text("date,value\n2024-01-01,42\n")
    refused(capsys, distill_args(world, mine), "log.csv", "no distill_config.json")
    assert (mine / "log.csv").read_text() == "date,value\n2024-01-01,42\n"


def test_a_run_that_lost_its_settings_is_not_resumed_under_others(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(distill_args(world, run)) == 0
    (run / "distill_config.json").unlink()
    refused(capsys, distill_args(world, run, "--lr-scale", "50"), "no distill_config.json")


def test_one_folder_spelled_another_way_resumes(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(world)
    run = tmp_path / "run"
    assert main(distill_args(world, run, teacher="teacher", student="student")) == 0
    for teacher, student in (("teacher/", "./student"), (world / "teacher", world / "student")):
        capsys.readouterr()
        assert main(distill_args(world, run, teacher=teacher, student=student)) == 0
        assert "other settings" not in capsys.readouterr().err
    refused(capsys, distill_args(world, run, "--lr-scale", "50", teacher="teacher", student="student"), "differ")


def test_a_corpus_of_another_tokenizer_is_refused(world, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(world / "text", other)
    info = json.loads((other / "corpus.json").read_text()) | {"vocab_size": 49152}
    (other / "corpus.json").write_text(json.dumps(info))
    refused(capsys, distill_args(world, tmp_path / "r", data=other), "49152", "--tokenizer")
    refused(capsys, ["eval", "--model", str(world / "teacher"), "--data", str(other), "--split", "val"], "49152")
    for bad in ('{"format": "mmm', '{"format": "mmmamba-text-corpus", "vocab_size": "x"}', "[]"):
        (other / "corpus.json").write_text(bad)
        refused(capsys, distill_args(world, tmp_path / "r", data=other), "corpus.json")
    assert not (tmp_path / "r").exists()


def test_windows_of_one_token_are_refused(world, tmp_path, capsys):
    short = tmp_path / "short"
    shutil.copytree(world / "text", short)
    (short / "train.jsonl").write_text('{"input_ids": [5]}\n' * 8)
    refused(capsys, distill_args(world, tmp_path / "r", data=short), "train.jsonl:1", "2 or more")


def test_a_window_longer_than_the_model_is_refused_naming_the_split(world, tmp_path, capsys):
    long = tmp_path / "long"
    shutil.copytree(world / "text", long)
    (long / "val.jsonl").write_text(json.dumps({"input_ids": [1] * 5000}) + "\n")
    refused(capsys, ["eval", "--model", str(world / "teacher"), "--data", str(long), "--split", "val"],
            "val.jsonl", "max_position", "--seq-len")  # fmt: skip


def test_link_loops_and_refused_names_are_one_line(world, tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    refused(capsys, distill_args(world, tmp_path / "r", data=loop), "loop")
    refused(capsys, ["eval", "--model", str(world / "teacher"), "--data", str(world / "data"), "--json", str(loop)],
            "loop")  # fmt: skip
    long = tmp_path / ("x" * 300)
    refused(capsys, distill_args(world, long), "choose another path")
    refused(capsys, ["eval", "--model", str(world / "teacher"), "--data", str(world / "data"),
                     "--json", f"{long}.json"], "choose another path")  # fmt: skip


def test_report_refuses_an_unknown_group_before_writing(world, tmp_path, capsys):
    result = {"name": "x", "group": "nosuchgroup", "mean_accuracy": 0.5, "per_family": {"color": 0.5}, "n": 2}
    (tmp_path / "r.json").write_text(json.dumps(result))
    teacher = {"mean_accuracy": 0.5, "per_family": {"color": 0.5}, "n": 2}
    (tmp_path / "t.json").write_text(json.dumps(teacher))
    out = tmp_path / "rep" / "report.md"
    refused(capsys, ["report", "--runs", str(tmp_path / "r.json"), "--teacher-eval", str(tmp_path / "t.json"),
                     "--out", str(out)], "nosuchgroup")  # fmt: skip
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())


def test_a_diverged_stage_is_not_published(world, tmp_path, capsys):
    run = tmp_path / "run"
    refused(capsys, distill_args(world, run, "--lr-scale", "1e6", "--eval-every", "1"), "diverged", "--lr-scale",
            after_steps=True)  # fmt: skip
    assert not (run / "after_stage1").exists()


def test_a_log_that_is_not_the_runs_is_refused(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(distill_args(world, run, "--steps-per-stage", "2", "--stages", "1,3")) == 0
    shutil.rmtree(run / "after_stage3")  # stage 1 finished, stage 3 to do
    (run / "log.csv").write_text("a,b\n1,2\n")
    refused(capsys, distill_args(world, run, "--steps-per-stage", "2", "--stages", "1,3"), "log.csv", "not this run")
    (run / "log.csv").unlink()
    refused(capsys, distill_args(world, run, "--steps-per-stage", "2", "--stages", "1,3"), "log.csv", "missing")


def test_kl_temperature_has_a_floor(world, tmp_path, capsys):
    refused(capsys, distill_args(world, tmp_path / "r", "--temperature", "1e-30"), "--temperature")


def test_a_byte_order_mark_is_not_text(tmp_path):
    from mmmamba.data.text_corpus import read_document
    from mmmamba.infer.self_distill import read_prompts

    (tmp_path / "doc.txt").write_bytes(b"\xef\xbb\xbfHello there.\n")
    assert read_document(tmp_path / "doc.txt").startswith("Hello")
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfWhat is a list?\nSay hi.\n")
    assert read_prompts(tmp_path / "p.txt") == ["What is a list?", "Say hi."]


def test_self_distill_counts_prompts_before_answering(world, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    refused(capsys, ["data", "self-distill", "--teacher", str(world / "teacher"), "--prompts", str(tmp_path / "p.txt"),
                     "--out", str(tmp_path / "chat"), "--device", "cpu"], "2 prompts", "too few")  # fmt: skip


def test_a_tokenizer_with_ids_past_the_models_vocabulary_is_refused(world, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(world / "teacher", folder)
    write_tokenizer(folder)  # a BPE tokenizer of more ids than the model's 264 embedding rows
    args = ["generate", "--model", str(folder), "--prompt", "hi", "--device", "cpu"]
    refused(capsys, args, "its tokenizer has", "vocabulary is 264")


def test_convert_refuses_a_teacher_whose_tokenizer_does_not_load(world, tmp_path, capsys):
    teacher = tmp_path / "t"
    shutil.copytree(world / "teacher", teacher)
    (teacher / "tokenizer.json").write_text('{"byte": ')
    refused(capsys, ["convert", "--teacher", str(teacher), "--out", str(tmp_path / "s")], "tokenizer.json")
    assert not (tmp_path / "s").exists()


def test_chat_refuses_a_context_with_no_room_for_an_answer(world, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    refused(capsys, ["chat", "--model", str(world / "teacher"), "--max-context", "10"], "--max-context 10", "no room")
