"""Outputs that would overwrite work or write through links: refused in one line with exit 2 before any
work, and nothing outside --out is touched."""

from pathlib import Path

import pytest

from mmmamba.cli.main import main

TEACHER = "models/tiny-teacher"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["data", "make", "--out", str(root / "suite"), "--seed", "0", "--train", "2", "--val", "1",
                 "--test", "1"]) == 0  # fmt: skip
    assert main(["convert", "--teacher", TEACHER, "--keep-attention", "every:2", "--out", str(root / "S")]) == 0
    return root


def _distill(world, out, *extra):
    return main(["distill", "--teacher", TEACHER, "--student", str(world / "S"), "--data", str(world / "suite"),
                 "--out", str(out), "--stages", "1", "--steps-per-stage", "1", "--batch-size", "2",
                 "--device", "cpu", "--val-limit", "2", *extra])  # fmt: skip


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(world, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(precious)
    assert _distill(world, tmp_path / "run") == 2
    _one_line_error(capsys, ".lock", "not a plain file")
    assert precious.read_text() == "precious data"


def test_a_run_file_that_is_a_folder_is_refused_before_training(world, tmp_path, capsys):
    (tmp_path / "run" / "log.csv").mkdir(parents=True)
    assert _distill(world, tmp_path / "run") == 2
    _one_line_error(capsys, "log.csv", "is not a file")
    assert not (tmp_path / "run" / "after_stage1").exists()
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "after_stage1").write_text("x")
    assert _distill(world, tmp_path / "run2") == 2
    _one_line_error(capsys, "after_stage1", "not a checkpoint folder")


@pytest.mark.parametrize("where", ["run", "run/after_stage3"])
def test_checkpoint_writers_refuse_a_run_folder_and_its_stage_checkpoints(world, tmp_path, capsys, where):
    (tmp_path / "run" / "after_stage3").mkdir(parents=True)
    (tmp_path / "run" / "distill_config.json").write_text("{}")
    out = str(tmp_path / where)
    for argv in (["convert", "--teacher", TEACHER, "--out", out],
                 ["teacher", "graft", "--llm", TEACHER, "--out", out]):  # fmt: skip
        assert main(argv) == 2
        _one_line_error(capsys, out, "new folder")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["after_stage3", "distill_config.json"]
    assert not any((tmp_path / "run" / "after_stage3").iterdir())


def test_data_make_replaces_a_link_in_an_images_place_and_never_writes_through_it(world, tmp_path):
    suite = tmp_path / "suite"
    assert main(["data", "make", "--out", str(suite), "--seed", "0", "--train", "2", "--val", "1", "--test", "1"]) == 0
    image = next((suite / "images" / "val").glob("*.png"))
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    image.unlink()
    image.symlink_to(precious)
    argv = ["data", "make", "--out", str(suite), "--seed", "0", "--train", "2", "--val", "1", "--test", "1"]
    assert main([*argv, "--overwrite"]) == 0
    assert precious.read_text() == "precious"
    assert image.is_file() and not image.is_symlink() and image.read_bytes()[:4] == b"\x89PNG"


def test_the_triton_decode_backend_on_a_cpu_is_a_one_line_error(world, capsys):
    argv = ["generate", "--model", str(world / "S"), "--prompt", "hi", "--device", "cpu", "--decode-backend", "triton"]
    assert main(argv) == 2
    _one_line_error(capsys, "--decode-backend triton", "CUDA")
    assert Path(world / "S" / "config.json").is_file()


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_writer_replaces_an_existing_checkpoint_only_with_overwrite(world, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["convert", "--teacher", TEACHER, "--keep-attention", "none", "--out", str(other)]) == 0
    before = _tree(other)
    capsys.readouterr()
    for argv in (["convert", "--teacher", TEACHER, "--keep-attention", "every:2", "--out", str(other)],
                 ["teacher", "graft", "--llm", TEACHER, "--out", str(other)],
                 ["export", "--format", "mmmamba-official", "--model", TEACHER, "--out", str(other)]):  # fmt: skip
        assert main(argv) == 2
        _one_line_error(capsys, str(other), "already holds", "--overwrite")
        assert _tree(other) == before
    (tmp_path / "p.txt").write_text("hello\n")
    argv = ["data", "teacher-text", "--teacher", TEACHER, "--prompts", str(tmp_path / "p.txt"), "--out", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and "--overwrite" not in err  # teacher-text resumes its own folder, has no flag
    assert _tree(other) == before
    assert (
        main(["convert", "--teacher", TEACHER, "--keep-attention", "every:2", "--out", str(other), "--overwrite"]) == 0
    )
    assert _tree(other) != before and (other / "config.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", "--teacher", TEACHER, "--out", str(empty)]) == 0  # an empty folder is no loss


def test_convert_refuses_an_out_inside_the_teacher(tmp_path, capsys):
    import shutil

    teacher = tmp_path / "T"
    shutil.copytree(TEACHER, teacher)
    before = _tree(teacher)
    assert main(["convert", "--teacher", str(teacher), "--out", str(teacher / "student")]) == 2
    _one_line_error(capsys, "lies inside the teacher")
    assert _tree(teacher) == before


def test_data_make_keeps_a_finished_suite_of_other_settings_and_takes_up_an_interrupted_one(tmp_path, capsys):
    suite = tmp_path / "suite"
    argv = ["data", "make", "--out", str(suite), "--train", "2", "--val", "1", "--test", "1"]
    assert main([*argv, "--seed", "0"]) == 0
    before = _tree(suite)
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) == 2
    _one_line_error(capsys, str(suite), "already holds", "--overwrite")
    assert _tree(suite) == before
    (suite / "suite.json").unlink()  # as if stopped before its last write
    (suite / "test.jsonl").unlink()
    assert main([*argv, "--seed", "0"]) == 0
    assert _tree(suite) == before
    capsys.readouterr()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "config.json").write_text("{}")  # not a suite's file
    assert main(["data", "make", "--out", str(tmp_path / "mixed"), "--train", "2", "--val", "1", "--test", "1"]) == 2
    _one_line_error(capsys, "config.json", "--overwrite")


def test_links_loops_and_long_names_as_paths_are_one_line_errors_before_work(world, tmp_path, capsys):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "l.gguf").symlink_to(tmp_path / "l.gguf")
    long = str(tmp_path / ("x" * 300))
    capsys.readouterr()
    for argv, word in (
        (["convert", "--teacher", TEACHER, "--out", str(tmp_path / "dangling")], "dangling link"),
        (["data", "make", "--out", str(tmp_path / "loop"), "--train", "1", "--val", "1", "--test", "1"], "link loop"),
        (["convert", "--teacher", TEACHER, "--out", str(tmp_path / "alias")], "a link to a folder"),
        (["convert", "--teacher", TEACHER, "--out", long], "too long"),
        (["import", "gguf", str(tmp_path / "l.gguf"), "--out", str(tmp_path / "imp")], "symlink loop"),
        (
            [
                "distill",
                "--teacher",
                TEACHER,
                "--student",
                str(world / "S"),
                "--data",
                str(world / "suite"),
                "--out",
                str(world / "suite" / "run"),
            ],
            "lies inside the data folder",
        ),  # fmt: skip
    ):
        assert main(argv) == 2, argv
        _one_line_error(capsys, word)
    assert (tmp_path / "alias").is_symlink() and not any((tmp_path / "real").iterdir())
    assert not (world / "suite" / "run").exists() and not (tmp_path / "imp").exists()
    assert _distill(world, tmp_path / "alias") == 0  # a run writes inside its folder: a link to one is fine
    assert (tmp_path / "real" / "after_stage1" / "config.json").is_file()
