"""The looping metric: an answer loops when some 8 tokens in a row occur twice in it."""

from mmmamba.evaluation.freeform import looping, loops


def test_an_answer_loops_only_when_an_ngram_repeats():
    assert not loops(list(range(40)))
    assert loops([1, 2, 3] * 6)  # a period-3 loop: (1, 2, 3, 1, 2, 3, 1, 2) occurs again three tokens on
    assert loops([7] * 9)  # nine equal tokens: the 8-gram at 0 and at 1
    assert not loops([7] * 8)
    assert not loops([1, 2, 3, 4, 5, 6, 7, 9, 1, 2, 3, 4, 5, 6, 7, 8])  # 7 tokens repeat, not 8
    assert loops([0, 1, 2, 3, 4, 5, 6, 7, 9, 9, 0, 1, 2, 3, 4, 5, 6, 7])
    assert not loops([1, 2, 3] * 6, n=19)


def test_looping_is_the_share_of_answers_that_loop():
    answers = {"a": [5] * 20, "b": list(range(20)), "c": [1, 2] * 10, "d": []}
    assert looping(answers) == 0.5
    assert looping({}) == 0.0
