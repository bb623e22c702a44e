"""Synthetic request traces: streaming, random and strided, with a read/write mix.

Each returns ``(addr, is_write)`` as numpy arrays of ``n`` requests of ``request_bytes``:

- ``stream``: reads walk up from 0, writes walk up from half the capacity (a power of two, so a
  write lands in the same bank as its read but in another row: two large aligned tensors, like
  DRAMsim3's ``rw`` trace in dram_standards.md);
- ``random``: uniformly random ``request_bytes``-aligned addresses over the capacity (seeded);
- ``strided``: request i at ``i * stride`` (wrapping at the capacity), the adversarial case for
  a large power-of-two stride (same channel and bank, a new row every time).

The read/write mix is exact, not sampled: request i is a write when
``floor((i + 1) * (1 - F)) > floor(i * (1 - F))``, so a read fraction F = 0.5 alternates.
"""
from __future__ import annotations

import numpy as np

PATTERNS = ("stream", "random", "strided")


def write_mask(n: int, read_fraction: float) -> np.ndarray:
    """Which of ``n`` requests are writes, spread evenly (module doc)."""
    w = 1.0 - float(read_fraction)
    i = np.arange(n, dtype=np.float64)
    return np.floor((i + 1) * w + 1e-9) > np.floor(i * w + 1e-9)


def make(pattern: str, n: int, request_bytes: int, capacity_bytes: int,
         read_fraction: float = 1.0, *, stride: int = 8192, seed: int = 0):
    """``(addr, is_write)`` for ``n`` requests (module doc)."""
    is_write = write_mask(n, read_fraction)
    cap = int(capacity_bytes) // request_bytes * request_bytes
    if pattern == "stream":
        half = cap // 2
        k = np.empty(n, dtype=np.int64)
        k[~is_write] = np.arange(int((~is_write).sum()), dtype=np.int64)
        k[is_write] = np.arange(int(is_write.sum()), dtype=np.int64)
        addr = (k * request_bytes) % (half if is_write.any() else cap)
        addr = np.where(is_write, addr + half, addr)
    elif pattern == "random":
        rng = np.random.default_rng(seed)
        addr = rng.integers(0, cap // request_bytes, size=n, dtype=np.int64) * request_bytes
    elif pattern == "strided":
        addr = (np.arange(n, dtype=np.int64) * int(stride)) % cap
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return addr.astype(np.int64), is_write
