"""SRAM bandwidth sharing: _engine.sram_fill_rates gives the streams of one core max-min fair
rates over the banks they touch (progressive filling)."""
from __future__ import annotations

import numpy as np
import pytest

from tilesim.arch import _engine as E


def _progressive_filling(masks, nom, n_banks, cap):
    """Rates by the textbook algorithm, written out plainly: raise every open stream's rate
    together; a stream stops at its nominal rate or when one of its banks is full. A stream's
    rate is spread evenly over all the bits of its mask."""
    n = len(masks)
    banks = [[b for b in range(64) if (int(m) >> b) & 1] for m in masks]
    rate = [None] * n
    while any(r is None for r in rate):
        load = [0.0] * n_banks
        share = [0.0] * n_banks
        for s in range(n):
            for b in banks[s]:
                if b < n_banks:
                    if rate[s] is None:
                        share[b] += 1.0 / max(len(banks[s]), 1)
                    else:
                        load[b] += rate[s] / max(len(banks[s]), 1)
        level = min([(cap - load[b]) / share[b] for b in range(n_banks) if share[b] > 0]
                    + [nom[s] for s in range(n) if rate[s] is None])
        level = max(level, 1e-9)
        for s in range(n):
            if rate[s] is None and (nom[s] <= level * (1 + 1e-12) or any(
                    share[b] > 0 and (cap - load[b]) / share[b] <= level * (1 + 1e-12)
                    for b in banks[s] if b < n_banks)):
                rate[s] = level
    return np.array(rate)


@pytest.mark.parametrize("n_banks", [4, 32, 48])
def test_fill_rates_are_max_min_fair(n_banks):
    """Random stream sets (1-12 streams, 1-6 contiguous banks each, nominal rates equal or
    mixed, caps that do and do not bind): the kernel's rates equal plain progressive filling,
    no bank carries more than its capacity, and every stream runs at its nominal rate or
    touches a full bank on which no stream runs faster (the max-min fairness certificate)."""
    rng = np.random.default_rng(n_banks)
    bound = 0
    for _ in range(400):
        n = int(rng.integers(1, 13))
        first = rng.integers(0, n_banks, n)
        width = rng.integers(1, 7, n)
        masks = np.array([sum(1 << b for b in {int((f + j) % n_banks) for j in range(w)})
                          for f, w in zip(first, width)], np.uint64)
        nom = (np.full(n, float(rng.choice([64.0, 256.0]))) if rng.random() < 0.5
               else rng.uniform(1.0, 300.0, n))
        cap = float(rng.choice([16.0, 64.0, 128.0, 1e4]))
        nxt = np.arange(1, n + 1, dtype=np.int64)
        nxt[-1] = -1
        rate = np.zeros(n)
        E.sram_fill_rates(0, nxt, nom, masks, rate, n_banks, cap, np.zeros(3 * n_banks + 8))
        np.testing.assert_allclose(rate, _progressive_filling(masks, nom, n_banks, cap),
                                   rtol=1e-12)
        per_bank = np.zeros(n_banks)
        on = [[b for b in range(n_banks) if (int(m) >> b) & 1] for m in masks]
        for s in range(n):
            per_bank[on[s]] += rate[s] / len(on[s])
        assert (per_bank <= cap * (1 + 1e-9)).all()
        for s in range(n):
            if rate[s] < nom[s] * (1 - 1e-9):
                bound += 1
                assert any(per_bank[b] >= cap * (1 - 1e-9)
                           and all(rate[t] <= rate[s] * (1 + 1e-9) for t in range(n) if b in on[t])
                           for b in on[s])
    assert bound > 100          # the bank limit binds often enough to test it
