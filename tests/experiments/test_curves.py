"""Distillation curves: val.csv rows come back as the table's points, and bad input is one line, exit 2."""

from mmmamba.distill.validation import val_log
from mmmamba.experiments.curves import main


def test_curves_table_and_plot_from_val_csv(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    log = val_log(run)
    log.add(3, 100, 2_500_000, 0.7, 2.9, 2.2, 2.01)
    log.add(3, 200, 5_000_000, 0.6, 2.7, 2.2, 1.65)
    log.add(3, 300, 7_500_000, 0.5, 2.6, 2.2, 1.49)
    log.truncate(3, 200)  # a resume from step 200 forgets step 300
    assert main(["--runs", f"s={run}", "--out", str(tmp_path / "c.png"), "--table", str(tmp_path / "c.md"),
                 "--target", "s=1.25"]) == 0  # fmt: skip
    table = (tmp_path / "c.md").read_text().splitlines()
    assert table[2:] == ["| s | 100 | 2.5 | 2.010 | 0.700 |", "| s | 200 | 5.0 | 1.650 | 0.600 |"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_refuse_a_run_without_validations(tmp_path, capsys):
    assert main(["--runs", f"s={tmp_path}", "--out", str(tmp_path / "c.png")]) == 2
    assert "no val.csv rows" in capsys.readouterr().out
    assert main(["--runs", "nameonly", "--out", str(tmp_path / "c.png")]) == 2
