"""scripts/vlm_teacher_tables.sh up to the teacher, on a tiny GGUF: several rates are tuned side by side,
the best on validation becomes the teacher (a link), it is scored, and a rerun redoes nothing; then a row of a
second recipe (ABL, DISTILL_ARGS, CONVERT_ARGS, its own train mix DISTILL_FAMILY_TRAIN) is distilled beside the
first recipe's folder and reported on its own."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("transformers")

from tests.formats.gguf_files import hf_llama, write_gguf  # noqa: E402

ROOT = Path(__file__).parents[2]


def test_teacher_sweep_picks_on_validation_links_and_resumes(tmp_path):
    write_gguf(tmp_path / "tiny.gguf", hf_llama())
    mm = [sys.executable, "-m", "mmmamba"]
    run = dict(check=True, capture_output=True, text=True, cwd=ROOT)
    subprocess.run([*mm, "import", "gguf", str(tmp_path / "tiny.gguf"), "--out", str(tmp_path / "R" / "llm")], **run)
    docs = tmp_path / "docs"
    docs.mkdir()
    rng = random.Random(0)
    words = "alpha beta gamma delta cat dog tree house river stone light dark".split()
    for i in range(20):
        (docs / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)))
    subprocess.run([*mm, "data", "text", "--inputs", str(docs), "--out", str(tmp_path / "text"), "--tokenizer",
                    str(tmp_path / "R" / "llm"), "--seq-len", "64", "--near-duplicate", "2"], **run)  # fmt: skip
    env = dict(os.environ, PY=sys.executable, R=str(tmp_path / "R"), GGUF=str(tmp_path / "tiny.gguf"),
               TEXT=str(tmp_path / "text"), STOP_AFTER="teacher", SUITE="16,8,2", EMBED_STEPS="1", TUNE_STEPS="2",
               TUNE_EVAL_EVERY="2", TUNE_LR="1e-4 3e-4", TUNE_BATCH="4", BATCH="4",
               FAMILY_TRAIN="reverse=20 digit=3", DISTILL_FAMILY_TRAIN="none")  # fmt: skip
    script = ["bash", str(ROOT / "recipes" / "deep_vlm.sh")]
    first = subprocess.run(script, env=env, **run)
    R = tmp_path / "R"
    choice = json.loads((R / "teacher_choice.json").read_text())
    assert sorted(Path(r["run"]).name for r in choice["runs"]) == ["teacher_lr1e-4", "teacher_lr3e-4"]
    assert (R / "teacher").is_symlink() and (R / "teacher").resolve() == Path(choice["chosen"]).resolve()
    best = max(r["val_accuracy"] for r in choice["runs"] if r["keeps_text"])
    assert [r["val_accuracy"] for r in choice["runs"] if r["run"] == choice["chosen"]] == [best]
    assert json.loads((R / "teacher_eval.json").read_text())["n"] == 16  # 2 test samples x 8 families
    assert json.loads((R / "suite" / "suite.json").read_text())["family_train"] == {"reverse": 20, "digit": 3}
    for lr in ("1e-4", "3e-4"):  # each tune's own log, side by side
        assert "+ mmmamba teacher tune" in (R / f"tune_lr{lr}.log").read_text()
    assert "+ mmmamba eval" in first.stderr
    again = subprocess.run(script, env=env, **run)
    assert "+ mmmamba" not in again.stderr  # everything was done: nothing is rerun

    scored = json.loads((R / "teacher_eval.json").read_text())  # the random tiny teacher scores 0, which
    scored["mean_accuracy"] = 0.5  # `mmmamba report` refuses (a ratio to 0): a score to report against
    (R / "teacher_eval.json").write_text(json.dumps(scored))
    rows = dict(env, STOP_AFTER="", RUNS="linear", TOTAL_STEPS="4", JOBS="1", SSD="torch", TEXT_WINDOWS="4",
                ABL="ablations_2", DISTILL_ARGS="--ce-weight 1", DISTILL_FAMILY_TRAIN="position=5",
                CONVERT_ARGS="--conv-kernel 3")  # fmt: skip
    subprocess.run(script, env=rows, **run)
    result = json.loads((R / "ablations_2" / "linear" / "result.json").read_text())
    assert result["steps"] == [1, 1, 2] and not (R / "ablations").exists()
    distill = [c for c in result["commands"] if c.startswith("mmmamba distill")]
    assert len(distill) == 1 and distill[0].endswith("--ce-weight 1")
    student = json.loads((R / "ablations_2" / "linear" / "student" / "config.json").read_text())
    assert student["mamba"]["conv_kernel"] == 3  # CONVERT_ARGS reached `mmmamba convert`
    rows_suite = R / "suite_position-5"  # the rows' own mix; scored on the same test split as the teacher
    assert f"--data {rows_suite} " in distill[0]
    assert json.loads((rows_suite / "suite.json").read_text())["family_train"] == {"position": 5}
    for split in ("val", "test"):
        assert (rows_suite / f"{split}.jsonl").read_bytes() == (R / "suite" / f"{split}.jsonl").read_bytes()
    assert "linear" in (R / "RESULTS_deep_2.md").read_text() and (R / "deep_chart_2.png").stat().st_size > 0
