"""The largest-batch search: candidates from memory, and an out-of-memory ending one try cleanly."""

import pytest
import torch

from mmmamba.bench.speed import batch_candidates, largest_batch


def test_batch_candidates_start_at_what_fits_then_powers_of_two():
    assert batch_candidates(3_400_000_000, 133_000_000_000, 256) == [35, 32, 16, 8, 4, 2, 1]
    assert batch_candidates(1_000, 10**12, 256) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert batch_candidates(10**12, 10**9, 256) == [1]  # one row more than the card: still try one


def test_out_of_memory_moves_to_the_next_batch_and_other_errors_propagate():
    def step(batch):
        if batch > 20:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 2.0 * batch

    best = largest_batch(step, [35, 32, 16, 8])
    assert best["batch"] == 16 and best["out_of_memory_at"] == [35, 32]
    assert best["tokens_per_s"] == pytest.approx(16 / 32 * 1e3)

    def broken(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        largest_batch(broken, [4, 2, 1])
    assert "error" in largest_batch(lambda b: step(100), [4, 2])
