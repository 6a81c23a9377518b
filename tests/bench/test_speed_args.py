import pytest

from mmmamba.bench.speed import parse_args


def test_prefill_repeats_default_times_a_second_prefill():
    assert parse_args(["--out", "b"]).prefill_repeats == 2


def test_prefill_repeats_below_one_is_refused_with_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--out", "b", "--prefill-repeats", "0"])
    assert e.value.code == 2
    assert "--prefill-repeats 0" in capsys.readouterr().err
