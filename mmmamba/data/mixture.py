"""Weighted pooling of data folders: ``--data DIR:WEIGHT ...``.

A plain ``DIR`` has weight 1. A weight multiplies how often each of the folder's train samples is
drawn, relative to the other folders' samples: ``--data docs:1 chats:3`` draws a chat sample three
times as often as a document sample, so the chats' share of the batches is 3·n_chats / (n_docs +
3·n_chats). When every weight is 1 the pool is sampled uniformly by sample, exactly as before
(``training.state.batch_indices``).

Weighted batches (``MixtureSampler``): each step, the batch's rows are dealt to the folders by their
shares with the rounding carried from step to step (every folder gets its share within one sample
over any run of steps); within a folder, samples come from its own epoch-wise shuffles without
replacement. A step's indices are a pure function of (seed, step), so a resumed run continues the
same sequence.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import MmmambaError
from ..training.state import batch_indices, epoch_order

MAX_WEIGHT = 1e6


def parse_source(spec: str) -> tuple[str, float]:
    """``DIR`` → (DIR, 1.0); ``DIR:WEIGHT`` → (DIR, WEIGHT). A folder whose own name holds a colon is
    taken as a folder when it exists."""
    spec = str(spec)
    folder, sep, weight = spec.rpartition(":")
    if not sep or Path(spec).exists() or "/" in weight:
        return spec, 1.0
    try:
        w = float(weight)
    except ValueError:
        raise MmmambaError(f"--data {spec}: {weight!r} is not a weight; give DIR or DIR:WEIGHT (e.g. docs:2)") from None
    if not math.isfinite(w) or not 0 < w <= MAX_WEIGHT:
        raise MmmambaError(f"--data {spec}: weight {weight}; give a number above 0 and at most {MAX_WEIGHT:g}")
    return folder, w


def parse_sources(specs) -> tuple[list[str], list[float]]:
    specs = list(specs) if isinstance(specs, (list, tuple)) else [specs]
    pairs = [parse_source(s) for s in specs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def shares(sizes: list[int], weights: list[float]) -> list[float]:
    """Each folder's expected share of the batches."""
    mass = [n * w for n, w in zip(sizes, weights)]
    return [m / sum(mass) for m in mass]


class MixtureSampler:
    """Global indices (into the folders' train samples, concatenated in order) of each step's batch."""

    def __init__(self, sizes: list[int], weights: list[float], batch: int, seed: int):
        if any(n < 1 for n in sizes):
            raise MmmambaError(f"--data: a weighted folder has no train samples ({sizes})")
        self.sizes, self.weights, self.batch, self.seed = list(sizes), list(weights), batch, seed
        self.uniform = all(w == 1 for w in weights)
        self.share = shares(sizes, weights)
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self._step, self._drawn, self._carry = 0, [0] * len(sizes), [0.0] * len(sizes)
        self._orders: dict[tuple[int, int], list[int]] = {}

    def _order(self, f: int, epoch: int) -> list[int]:
        if (f, epoch) not in self._orders:
            if len(self._orders) > 2 * len(self.sizes):
                self._orders.clear()
            self._orders[f, epoch] = epoch_order(self.sizes[f], self.seed * 31 + f, epoch).tolist()
        return self._orders[f, epoch]

    def counts(self, step: int) -> tuple[list[int], list[int]]:
        """(rows per folder at ``step``, samples drawn from each folder before it)."""
        if step < self._step:  # a rewind (resume): replay from the start
            self._step, self._drawn, self._carry = 0, [0] * len(self.sizes), [0.0] * len(self.sizes)
        while True:
            want = [c + self.batch * s for c, s in zip(self._carry, self.share)]
            take = [math.floor(x) for x in want]
            by_rest = sorted(range(len(want)), key=lambda i: (-(want[i] - take[i]), i))
            for i in by_rest[: self.batch - sum(take)]:
                take[i] += 1
            if self._step == step:
                return take, list(self._drawn)
            self._carry = [x - t for x, t in zip(want, take)]
            self._drawn = [d + t for d, t in zip(self._drawn, take)]
            self._step += 1

    def indices(self, step: int) -> list[int]:
        if self.uniform:  # every weight 1: the plain pool, as without weights
            return batch_indices(sum(self.sizes), self.batch, self.seed, step)
        take, drawn = self.counts(step)
        out: list[int] = []
        for f, (n, k, start) in enumerate(zip(self.sizes, take, drawn)):
            for pos in range(start, start + k):
                epoch, i = divmod(pos, n)
                out.append(self.offsets[f] + self._order(f, epoch)[i])
        mix = torch.randperm(len(out), generator=torch.Generator().manual_seed(self.seed * 100_003 + step))
        return [out[i] for i in mix.tolist()]  # folders interleaved: micro-batches see the mix
