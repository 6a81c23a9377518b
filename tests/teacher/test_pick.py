"""mmmamba/teacher/pick.py: the best validation accuracy among teacher runs that keep the LLM's text."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEADER = "phase,step,lr,loss,val_accuracy,text_val_ppl\n"


def fake_run(folder: Path, lr: float, val: float, ppl: float, test: float, finished: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "tune_config.json").write_text(json.dumps({"all_lr": lr}))
    (folder / "tune_log.csv").write_text(HEADER + f"embed,150,1e-3,1.5,0.14,13.5\nall,500,{lr},0.9,0.5,9.0\n"
                                         f"all,1000,{lr},0.7,{val},{ppl}\n")  # fmt: skip
    if finished:
        (folder / "teacher_report.json").write_text(json.dumps({"suite_test": {"mean_accuracy": test}}))
    return folder


def pick(tmp_path, *runs):
    cmd = [sys.executable, "-m", "mmmamba.teacher.pick", "--runs", *map(str, runs),
           "--out", str(tmp_path / "choice.json"), "--link", str(tmp_path / "teacher")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_picks_best_val_among_runs_that_keep_text_never_reading_test(tmp_path):
    a = fake_run(tmp_path / "lr1", 1e-4, val=0.80, ppl=9.0, test=0.99)  # best test: must not matter
    b = fake_run(tmp_path / "lr2", 2e-4, val=0.90, ppl=10.0, test=0.70)
    c = fake_run(tmp_path / "lr4", 4e-4, val=0.95, ppl=14.0, test=0.95)  # text worse than the LLM's 13.5
    d = fake_run(tmp_path / "lr8", 8e-4, val=0.99, ppl=5.0, test=0.99, finished=False)  # not finished
    r = pick(tmp_path, a, b, c, d)
    assert r.returncode == 0, r.stderr
    assert "lr8: not finished" in r.stderr
    choice = json.loads((tmp_path / "choice.json").read_text())
    assert choice["chosen"] == str(b)
    assert [x["keeps_text"] for x in choice["runs"]] == [True, True, False]
    assert (tmp_path / "teacher").is_symlink() and (tmp_path / "teacher").resolve() == b.resolve()
    e = fake_run(tmp_path / "lr3", 3e-4, val=0.92, ppl=9.5, test=0.5)
    assert pick(tmp_path, a, b, e).returncode == 0  # the link is replaced, not nested
    assert (tmp_path / "teacher").resolve() == e.resolve()


def test_a_damaged_run_is_left_out_by_name(tmp_path):
    good = fake_run(tmp_path / "good", 1e-4, 0.5, 9.0, 0.5)
    bad = fake_run(tmp_path / "bad", 2e-4, 0.9, 9.0, 0.9)
    (bad / "tune_log.csv").write_text(HEADER + "all,1000,2e-4,0.7,not-a-number,9.0\n")
    gone = fake_run(tmp_path / "gone", 3e-4, 0.9, 9.0, 0.9)
    (gone / "tune_log.csv").unlink()
    r = pick(tmp_path, good, bad, gone)
    assert r.returncode == 0, r.stderr
    assert "bad: unreadable" in r.stderr and "gone: unreadable" in r.stderr
    assert (tmp_path / "teacher").resolve() == good.resolve()


def test_no_finished_run_is_an_error(tmp_path):
    r = pick(tmp_path, fake_run(tmp_path / "x", 1e-4, 0.5, 9.0, 0.5, finished=False))
    assert r.returncode == 2 and "none of the 1 runs finished" in r.stderr
    assert not (tmp_path / "teacher").exists()
