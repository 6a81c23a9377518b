"""`mmmamba report` tables for the deep grid (issue #15), and the ablation script's layer placements."""

import json

import pytest

from mmmamba.experiments import ablations
from mmmamba.experiments.report import paper_ratio, write_report


@pytest.mark.parametrize(
    "spec, layers, expected",
    [
        ("INTERLEAVED:8", 30, [0, 4, 8, 12, 16, 20, 24, 28]),  # the paper's head-interleaved 8 (as every:4)
        ("TAIL_INTERLEAVED:8", 30, [1, 5, 9, 13, 17, 21, 25, 29]),
        ("INTERLEAVED:4", 30, [0, 8, 16, 24]),
        ("INTERLEAVED:2", 30, [0, 15]),
        ("TAIL_INTERLEAVED:2", 4, [1, 3]),
        ("INTERLEAVED:4", 9, [0, 2, 4, 6]),  # ceil(9 / 4) = 3 would pass the last layer
        ("INTERLEAVED:8", 32, [0, 4, 8, 12, 16, 20, 24, 28]),
    ],
)
def test_interleaved_placements(spec, layers, expected):
    got = [int(i) for i in ablations.resolve_keep(spec, layers).split(",")]
    assert got == expected and len(set(got)) == len(got) and all(0 <= i < layers for i in got)


def test_deep_grid_holds_the_papers_tables():
    deep = ablations.GRIDS["deep"]
    stages = {v[3] for v in deep.values() if v[0] == "stages"} | {deep["linear"][3]}
    assert stages == {(1,), (3,), (1, 3), (2, 3), (1, 2, 3)}
    assert {v[2] for k, v in deep.items() if v[0] == "init"} | {deep["linear"][2]} == {"scratch", "inherit", "mimic"}
    placements = {v[1] for v in deep.values() if v[0] == "placement"}
    assert placements == {"TAIL_INTERLEAVED:8", "head:8", "tail:8", "auto:8", "AUTO_RELATIVE:8"}
    assert ablations.split_steps((1, 2, 3), 400) == [100, 100, 200] and ablations.split_steps((1, 3), 300) == [100, 200]


def _row(tmp_path, name, group, kept, acc, ppl):
    row = {
        "name": name,
        "group": group,
        "keep_attention": kept,
        "init": "mimic",
        "stages": [1, 2, 3],
        "mean_accuracy": acc,
        "per_family": {"count": acc, "color": acc},
        "text": {"perplexity": ppl, "teacher_perplexity": 10.0, "kl_teacher_model": 0.1},
        "commands": [f"mmmamba distill ... {name}"],
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(row))
    return path


def test_report_shows_text_perplexity_and_the_papers_row(tmp_path):
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"mean_accuracy": 0.96, "per_family": {"count": 0.96, "color": 0.96}}))
    runs = [
        _row(tmp_path, "linear", "headline", [], 0.80, 14.0),
        _row(tmp_path, "hybrid_every4", "headline", list(range(0, 30, 4)), 0.92, 11.0),
        _row(tmp_path, "keep_2", "kept", [0, 15], 0.84, 13.0),
    ]
    out = tmp_path / "RESULTS.md"
    q = write_report(runs, teacher, out)
    lines = out.read_text().splitlines()
    head = next(line for line in lines if line.startswith("| run |"))
    assert head.endswith("| count | color | text ppl | paper vs teacher |")
    row = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert "| 10.00 | 1.000 |" in row["teacher"]  # the teacher's perplexity, scored beside the runs
    assert row["linear"].endswith("| 14.00 | 0.860 |")  # paper: mean of 1303.5/1433.5, 85.2/87.6, 47.7/66, 79.2/94.8
    assert row["hybrid_every4"].endswith("| 11.00 | 0.924 |")  # 1371.1, 86.7, 55.1, 86.9 over the teacher's
    assert q["hybrid"] == pytest.approx(0.92)
    assert "- **keep_2** (? s):" in lines  # no budget recorded: only the unknown wall time


def test_report_lists_each_runs_steps_tokens_and_wall_time(tmp_path):
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"mean_accuracy": 0.9, "per_family": {"count": 0.9, "color": 0.9}}))
    row = json.loads(_row(tmp_path, "linear", "headline", [], 0.8, 14.0).read_text())
    row.update(steps=[50, 50, 100], tokens=1_234_567, seconds=321.5)
    (tmp_path / "linear.json").write_text(json.dumps(row))
    write_report([tmp_path / "linear.json"], teacher, tmp_path / "R.md")
    lines = (tmp_path / "R.md").read_text().splitlines()
    assert "- **linear** (steps 50+50+100, 1.23 M tokens, 321.5 s):" in lines


def test_paper_column_only_where_the_configuration_matches():
    assert paper_ratio({"name": "hybrid_every4", "keep_attention": [0]}) is None  # the 4-layer toy keeps 1
    assert paper_ratio({"name": "keep_4", "keep_attention": [0, 8, 16, 24]}) == pytest.approx(
        (1329.1 / 1433.5 + 86.8 / 87.6 + 51.5 / 66.0 + 82.8 / 94.8) / 4
    )
    assert paper_ratio({"name": "stages_23", "keep_attention": []}) is None  # not in the paper


def test_trained_tokens_sum_the_distillation_log(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "stage,step,lr,train_loss,val_loss,tokens,seconds\n"
        "1,1,1e-3,0.5,,1000,0.1\n"
        "1,2,1e-3,,0.4,1200,0.1\n"  # a skipped step still consumed its tokens
        "3,1,5e-5,0.9,,800,0.2\n"
    )
    assert ablations._trained_tokens(log) == 3000
    assert ablations._trained_tokens(tmp_path / "missing.csv") is None  # a run without a log: unknown, not 0


def test_a_row_past_its_start_deadline_runs_nothing(tmp_path):
    args = type("Args", (), {"grid": "deep", "out": str(tmp_path), "start_by": 0.0})()  # long past
    assert ablations.run_one("linear", args) is None
    assert not (tmp_path / "linear").exists()  # nothing converted, nothing written
    (tmp_path / "keep_2").mkdir()
    (tmp_path / "keep_2" / "result.json").write_text('{"name": "keep_2", "mean_accuracy": 0.5}')
    assert ablations.run_one("keep_2", args)["mean_accuracy"] == 0.5  # a finished row is still read back


def test_rows_side_by_side_split_the_cpu_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(ablations.os, "cpu_count", lambda: 16)
    env = ablations.job_env(type("Args", (), {"jobs": 8})())
    assert env["OMP_NUM_THREADS"] == "2" and env["TQDM_DISABLE"] == "1"
    assert ablations.job_env(type("Args", (), {"jobs": 32})())["OMP_NUM_THREADS"] == "1"  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert ablations.job_env(type("Args", (), {"jobs": 8})())["OMP_NUM_THREADS"] == "5"  # the caller's choice wins


def _grid_args(tmp_path, **kw):
    base = dict(
        grid="deep", out=str(tmp_path / "rows"), start_by=None, teacher=str(tmp_path / "teacher"),
        data=[str(tmp_path / "suite")], total_steps=8, batch_size=2, lr_scale=1.0, eval_every=4,
        distill_args="", convert_args="", text=None, text_windows=4, jobs=4, retries=1,
    )  # fmt: skip
    return ablations.argparse.Namespace(**{**base, **kw})


def test_a_failing_command_fails_its_row_and_keeps_the_log(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text('{"num_layers": 4}')  # no weights: convert must fail
    args = _grid_args(tmp_path)
    with pytest.raises(ablations.RowFailed, match="convert"):
        ablations.run_one("linear", args)
    log = tmp_path / "rows" / "linear" / "stdout.log"
    first = log.read_text()
    assert "+ mmmamba convert" in first and not (tmp_path / "rows" / "linear" / "result.json").exists()
    with pytest.raises(ablations.RowFailed):
        ablations.run_one("linear", args)
    assert log.read_text().startswith(first)  # the retry appends: the first attempt's error is kept


def test_failed_rows_are_retried_after_the_others_with_fewer_side_by_side(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(name, args):
        calls.append((name, args.jobs))
        if name == "stages_3" or (name == "linear" and sum(c[0] == "linear" for c in calls) == 1):
            raise ablations.RowFailed(f"{name}: out of memory")
        return {"name": name}

    monkeypatch.setattr(ablations, "run_one", fake_run_one)
    names = ["linear", "keep_2", "stages_3"]
    results, left_out, failed = ablations.run_rows(names, _grid_args(tmp_path, jobs=4, retries=1))
    assert [r["name"] for r in results] == ["linear", "keep_2"] and failed == ["stages_3"] and left_out == []
    assert sorted(calls) == sorted([("linear", 4), ("keep_2", 4), ("stages_3", 4), ("linear", 2), ("stages_3", 2)])
    calls.clear()
    assert ablations.run_rows(names, _grid_args(tmp_path, retries=0))[2] == ["linear", "stages_3"]  # no retry


def test_rows_side_by_side_show_one_bar_over_their_logged_steps(tmp_path, capsys):
    args = ablations.argparse.Namespace(grid="tiny", out=str(tmp_path), total_steps=16, stage_shares="1,1,2")
    assert ablations.row_steps("linear", args) == 16 and ablations.row_steps("stages_1", args) == 16
    for name, steps in (("linear", 3), ("hybrid_every4", 5)):
        (tmp_path / name / "run").mkdir(parents=True)
        rows = "".join(f"1,{i},1e-3,0.5,,100,0.1\n" for i in range(1, steps + 1))
        (tmp_path / name / "run" / "log.csv").write_text("stage,step,lr,train_loss,val_loss,tokens,seconds\n" + rows)
    stop = ablations.threading.Event()
    stop.set()  # one reading, then the bar closes
    ablations.watch_rows(["linear", "hybrid_every4", "keep_head2"], args, stop)  # keep_head2: no log yet
    assert "8/48" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a|b", "two\nlines", "", "x" * 81])
def test_report_refuses_run_names_that_would_break_its_table(tmp_path, name):
    from mmmamba.errors import MmmambaError

    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"mean_accuracy": 0.9, "per_family": {"count": 0.9, "color": 0.9}}))
    bad = _row(tmp_path, "bad", "headline", [1], 0.8, 11.0)
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "name": name}))
    with pytest.raises(MmmambaError, match="run name"):
        write_report([bad], teacher, tmp_path / "R.md")


def test_report_refuses_a_run_given_twice(tmp_path):
    from mmmamba.errors import MmmambaError

    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"mean_accuracy": 0.9, "per_family": {"count": 0.9, "color": 0.9}}))
    row = _row(tmp_path, "linear", "headline", [], 0.8, 11.0)
    with pytest.raises(MmmambaError, match="given twice"):
        write_report([row, row], teacher, tmp_path / "R.md")
    assert not (tmp_path / "R.md").exists()
