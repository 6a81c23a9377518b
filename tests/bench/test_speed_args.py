import pytest

from mmmamba.bench.speed import parse_args


def test_prefill_repeats_default_times_a_second_prefill():
    assert parse_args(["--out", "b"]).prefill_repeats == 2


def test_prefill_repeats_below_one_is_refused_with_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--out", "b", "--prefill-repeats", "0"])
    assert e.value.code == 2
    assert "--prefill-repeats 0" in capsys.readouterr().err


def test_timed_prefills_times_each_run_but_not_its_prepare_and_frees_the_last_result_first(monkeypatch):
    import gc
    import time
    import weakref

    import torch

    from mmmamba.bench import speed

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    class Cache:
        pass

    alive, durations = [], iter([0.03, 0.01, 0.02])

    def prepare():
        gc.collect()
        alive.append(sum(r() is not None for r in refs))  # earlier caches still held when this one is made
        time.sleep(0.05)  # not timed
        cache = Cache()
        refs.append(weakref.ref(cache))
        return cache

    def run(cache):
        time.sleep(next(durations))
        return cache, len(refs)

    refs = []
    (cache, n), row = speed.timed_prefills(prepare, run, 3)
    assert n == 3 and cache is refs[-1]()
    assert alive == [0, 0, 0]
    assert 0.01 <= row["prefill_s"] < 0.03 <= row["prefill_first_s"] < 0.05
