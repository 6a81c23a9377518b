"""training/run.py: the one run folder of every trainer (settings, logs, publishing, one writer)."""

import pytest

from mmmamba.errors import MmmambaError
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.training.run import RunFolder, RunLog


def test_settings_are_refused_when_they_or_the_data_differ(tmp_path):
    run = RunFolder(tmp_path / "r", "cfg.json", what="teacher run")
    run.check_settings({"a": 1})  # nothing recorded yet
    run.save_settings({"a": 1, "data_identity": ["x"]})
    run.check_settings({"a": 1, "data_identity": ["x"]})
    with pytest.raises(MmmambaError, match=r"teacher run with other settings \(a differ in cfg.json\)"):
        run.check_settings({"a": 2, "data_identity": ["x"]})
    with pytest.raises(MmmambaError, match="teacher run on other data"):
        run.check_settings({"a": 1, "data_identity": ["y"]})


def test_an_unreadable_settings_file_is_refused_only_when_work_would_be_lost(tmp_path):
    run = RunFolder(tmp_path, "cfg.json")
    (tmp_path / "cfg.json").write_text("{not json")
    run.check_settings({"a": 1})  # nothing to protect: the file is rewritten
    (tmp_path / "after_stage1").mkdir()
    with pytest.raises(MmmambaError, match="holds finished work"):
        run.check_settings({"a": 1})


def test_log_truncates_past_the_resumed_step_and_keeps_column_order(tmp_path):
    log = RunLog(tmp_path / "log.csv", ("stage", "step", "loss"), key=("stage", "step"))
    for stage, step in ((1, 1), (1, 2), (2, 1), (2, 2), (2, 3)):
        log.add(stage, step, 0.5 / step)
    log.truncate(2, 1)
    assert [(r["stage"], r["step"]) for r in log.rows()] == [("1", "1"), ("1", "2"), ("2", "1")]
    assert log.total("step") == 4
    assert log.path.read_text().splitlines()[:2] == ["stage,step,loss", "1,1,0.5"]
    log.add(2, 2, None)
    assert log.rows()[-1] == {"stage": "2", "step": "2", "loss": ""}


def test_log_rows_leave_out_malformed_lines_and_every_line_ends_as_the_header(tmp_path):
    log = RunLog(tmp_path / "log.csv", ("phase", "step", "loss"), text=("phase",))
    log.add("embed", 1, 0.5)
    with log.path.open("a") as f:  # a line cut short by a kill, one edited by hand, one with a cell too many
        f.write("embed,2\nembed,x,0.4\nembed,3,oops\nembed,4,0.3,9\n")
    log.add("full", 5, 0.25)
    assert [(r["phase"], r["step"], r["loss"]) for r in log.rows()] == [("embed", "1", "0.5"), ("full", "5", "0.25")]
    assert log.total("step") == 6
    assert b"\r" not in log.path.read_bytes()


def test_a_malformed_log_line_does_not_stop_the_loss_plot(tmp_path):
    from mmmamba.distill.trainer import LOG_COLUMNS, plot_losses

    log = RunLog(tmp_path / "log.csv", LOG_COLUMNS, key=("stage", "step"))
    log.add(1, 1, "1e-3", 0.5, None, 10, 0.1)
    with log.path.open("a") as f:
        f.write("1,2\n1,3,1e-3,,,\n")
    log.add(1, 4, "1e-3", 0.25, 0.3, 10, 0.1)
    plot_losses(tmp_path)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_publish_makes_a_part_finished_and_a_second_writer_is_refused(tmp_path):
    cfg = DecoderConfig(vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                        intermediate_size=16)  # fmt: skip
    with RunFolder(tmp_path / "r", "cfg.json") as run:
        assert not run.finished("stage1") and not run.has_work()
        run.publish("stage1", Decoder(cfg))
        assert run.finished("stage1") and run.has_work() and (run.part("stage1") / "config.json").is_file()
        with pytest.raises(MmmambaError, match="another mmmamba process"):
            RunFolder(tmp_path / "r", "cfg.json").__enter__()
    with RunFolder(tmp_path / "r", "cfg.json"):  # released: the next writer gets it
        pass


def test_log_takes_up_an_empty_file_a_line_cut_short_and_a_stray_byte(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"")  # killed before the header was written
    log = RunLog(path, ("stage", "step", "loss"), key=("stage", "step"))
    log.add(1, 1, 0.5)
    assert path.read_text() == "stage,step,loss\n1,1,0.5\n"
    with path.open("ab") as f:
        f.write(b"1,2,0.4\n1,3,\xff\n1,4,0.3")  # a stray byte, then a row cut short by a kill
    log = RunLog(path, ("stage", "step", "loss"), key=("stage", "step"))  # a resumed run
    log.truncate(1, 3)
    log.add(1, 4, 0.25)
    assert path.read_bytes().endswith(b"1,2,0.4\n1,3,\xff\n1,4,0.25\n")  # the cut row is gone, not glued
    assert [(r["step"], r["loss"]) for r in log.rows()] == [("1", "0.5"), ("2", "0.4"), ("4", "0.25")]
