"""The research probes behind RESULTS.md's #15 findings measure what they say."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_stage3_start_probe_scores_the_teacher_as_zero_and_converted_students_between_zero_and_uniform(tmp_path):
    mm = [sys.executable, "-m", "mmmamba"]
    subprocess.run([*mm, "data", "make", "--out", str(tmp_path / "suite"), "--seed", "5", "--train", "20",
                    "--val", "4", "--test", "2"], check=True, capture_output=True)  # fmt: skip
    probe = [sys.executable, "-m", "mmmamba.experiments.stage3_start", "--teacher", str(ROOT / "models" /
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


def test_layer_error_probe_ranks_each_layer_by_its_error_its_output_and_their_ratio(tmp_path):
    mm = [sys.executable, "-m", "mmmamba"]
    teacher = str(ROOT / "models" / "tiny-teacher")
    subprocess.run([*mm, "data", "make", "--out", str(tmp_path / "suite"), "--seed", "6", "--train", "20",
                    "--val", "4", "--test", "2"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*mm, "convert", "--teacher", teacher, "--keep-attention", "1", "--out", str(tmp_path / "student")],
                   check=True, capture_output=True)  # fmt: skip
    probe = [sys.executable, "-m", "mmmamba.experiments.layer_errors", "--teacher", teacher,
             "--student", str(tmp_path / "student"), "--data", str(tmp_path / "suite"), "--k", "2"]  # fmt: skip
    out = subprocess.run(probe, check=True, capture_output=True, text=True).stdout.splitlines()
    rows = {int(r[0]): [float(x) for x in r[1:]] for r in (line.split() for line in out) if r and r[0].isdigit()}
    assert sorted(rows) == [0, 2, 3]  # the Mamba-2 layers; layer 1 stayed attention
    for power, mse, relative in rows.values():
        assert power > 0 and mse > 0 and abs(relative - mse / power) <= 1e-3 + 0.05 * relative  # printed rounded
    by_mse = sorted(sorted(rows, key=lambda i: -rows[i][1])[:2])
    assert f"top 2 by MSE (auto:2): {by_mse}" in out


def test_answer_breakdown_splits_position_into_row_and_column_and_reverse_by_length(tmp_path):
    rows = [
        {"family": "position", "reference": "row 1 column 2", "answer": "row 1 column 3", "correct": False},
        {"family": "position", "reference": "row 4 column 4", "answer": "row 4 column 4", "correct": True},
        {"family": "position", "reference": "row 2 column 1", "answer": "row", "correct": False},
        {"family": "reverse", "reference": "abc", "answer": "abc", "correct": True},
        {"family": "reverse", "reference": "abcd", "answer": "abdc", "correct": False},
        {"family": "reverse", "reference": "abcd", "answer": "abcd", "correct": True},
        {"family": "color", "reference": "red", "answer": "red", "correct": True},
    ]
    f = tmp_path / "answers.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, "-m", "mmmamba.experiments.answer_breakdown", str(f)],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "position row 0.67 column 0.33 (n = 3)" in out
    assert "reverse by length 3: 1.00 (1), 4: 0.50 (2)" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    r = subprocess.run([sys.executable, "-m", "mmmamba.experiments.answer_breakdown", str(bad)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "not a readable answers file" in r.stderr


def test_tune_step_script_packs_into_fewer_operators_than_the_padded_step():
    """mmmamba/bench/tune_step.py (the device comparison of `teacher tune --pack`) on a small CPU shape."""
    cmd = [sys.executable, "-m", "mmmamba.bench.tune_step", "--device", "cpu", "--layers", "2",
           "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--mlp", "48", "--vocab", "300", "--suite", "4",
           "--text", "2", "--text-len", "32", "--steps", "1", "--warmup", "1"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    rows = {r["variant"]: r for r in map(json.loads, (line for line in out if line.startswith("{")))}
    assert set(rows) == {"padded", "packed", "padded again"}
    assert rows["packed"]["aten_ops_per_step"] < rows["padded"]["aten_ops_per_step"]
    assert rows["padded"]["aten_ops_per_step"] == rows["padded again"]["aten_ops_per_step"]
