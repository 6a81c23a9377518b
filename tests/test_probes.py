"""The research probes behind RESULTS.md's #15 findings measure what they say."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_stage3_start_probe_scores_the_teacher_as_zero_and_converted_students_between_zero_and_uniform(tmp_path):
    mm = [sys.executable, "-m", "mmmamba"]
    subprocess.run([*mm, "data", "make", "--out", str(tmp_path / "suite"), "--seed", "5", "--train", "20",
                    "--val", "4", "--test", "2"], check=True, capture_output=True)  # fmt: skip
    probe = [sys.executable, str(ROOT / "scripts" / "probe_stage3_start.py"), "--teacher", str(ROOT / "models" /
             "tiny-teacher"), "--data", str(tmp_path / "suite"), "--converted", "0,2,9", "--batches", "1"]  # fmt: skip
    out = subprocess.run(probe, check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [line.split() for line in out if line.split() and line.split()[0].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [
        ("0", "mimic"),
        ("2", "mimic"),
        ("4", "mimic"),
        ("4", "inherit"),
        ("4", "scratch"),
    ]  # --converted 9 is capped at the teacher's 4 layers
    loss = {(r[0], r[1]): (float(r[2]), float(r[3])) for r in rows}
    assert loss[("0", "mimic")] == (0.0, 0.0)  # nothing converted: the student is the teacher
    for key in list(loss)[1:]:
        assert loss[key][0] > 0 and 0 < loss[key][1] < 1.5  # worse than the teacher, of the order of a uniform guess
