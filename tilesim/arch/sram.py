"""Banked single-level scratchpad, one per core.

Model
-----
Byte address ``a`` lives in bank ``(a // bank_width_bytes) % banks``. A bank serves
``ports_per_bank`` accesses of ``bank_width_bytes`` per cycle, so it moves at most
``cap = bank_width_bytes * ports_per_bank`` bytes per cycle.

Every SRAM-touching activity is a *stream*: an instruction of the matrix or vector engine (its
reads and writes together), or the data of one DMA request entering or leaving the SRAM. A
stream has a size in bytes, a nominal rate (bytes/cycle: what its engine would consume with the
SRAM to itself) and the set of banks its addresses touch (its *bank mask*), over which its
traffic is spread evenly. Concurrent streams of one core share the banks max-min fairly: every
stream gets the same rate unless its own nominal rate or a saturated bank holds it lower
(progressive filling, recomputed whenever a stream starts or ends). So a strided tile that maps
onto few banks is slowed on its own, and two engines that hammer the same banks slow each other
while engines on disjoint banks do not. A stream of S bytes at constant rate r ends
``ceil(S / r)`` cycles after it starts.

The masks have 64 bits: with more than 64 banks, bank b is counted in group ``b * 64 // banks``.

This is a fluid model of bank conflicts, not a cycle-by-cycle arbiter: it does not model which
engine wins a given cycle, only the rates that round-robin arbitration converges to.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tilesim.config import SramConfig

MASK_BITS = 64


def bank_of(addr: int, cfg: SramConfig) -> int:
    """The bank holding byte ``addr``."""
    return (addr // cfg.bank_width_bytes) % cfg.banks


def capacity_bytes_per_cycle(cfg: SramConfig) -> float:
    """Bytes one bank moves per cycle (``cap`` in the module docstring)."""
    return float(cfg.bank_width_bytes * cfg.ports_per_bank)


def peak_bytes_per_cycle(cfg: SramConfig) -> float:
    """All banks together."""
    return capacity_bytes_per_cycle(cfg) * cfg.banks


def groups(cfg: SramConfig) -> int:
    """Entries of a bank mask in use: min(banks, 64)."""
    return min(cfg.banks, MASK_BITS)


@lru_cache(maxsize=65536)
def _mask(base_mod: int, shape: tuple, strides: tuple, elem_bits: int, banks: int,
          width: int) -> int:
    # Rows of a strided pattern repeat their bank with a period that divides `banks`, so the
    # first `banks` indices of each outer dimension cover every bank the pattern can touch.
    run_bytes = shape[-1] * elem_bits // 8 if strides[-1] * 8 == elem_bits or shape[-1] == 1 \
        else None
    outer = [np.arange(min(n, banks)) * s for n, s in zip(shape[:-1], strides[:-1])]
    starts = np.zeros(1, np.int64) + base_mod
    for o in outer:
        starts = (starts[:, None] + o[None, :]).ravel()
    if run_bytes is None:  # elements not contiguous: each element is its own access
        inner = np.arange(min(shape[-1], banks)) * strides[-1]
        starts = (starts[:, None] + inner[None, :]).ravel()
        run_bytes = max(1, elem_bits // 8)
    first = starts // width
    n_acc = -(-(starts % width + run_bytes) // width)
    hit = np.zeros(banks, bool)
    span = int(min(n_acc.max(), banks))
    for j in range(span):
        hit[(first + j) % banks] = True
    mask = 0
    for b in np.nonzero(hit)[0]:
        mask |= 1 << int(b * MASK_BITS // banks if banks > MASK_BITS else b)
    return mask


def bank_mask(addr: int, shape, strides, elem_bits: int, cfg: SramConfig) -> int:
    """64-bit mask of the banks (or bank groups) an access pattern touches.

    ``shape`` is elements per dimension (outermost first), ``strides`` bytes per step."""
    shape = tuple(int(s) for s in shape)
    strides = tuple(int(abs(s)) for s in strides)
    keep = [i for i, n in enumerate(shape) if n > 1] or [len(shape) - 1]
    shape = tuple(shape[i] for i in keep)
    strides = tuple(strides[i] for i in keep)
    period = cfg.banks * cfg.bank_width_bytes
    return _mask(int(addr) % period, shape, tuple(s % period for s in strides[:-1])
                 + (strides[-1],), elem_bits, cfg.banks, cfg.bank_width_bytes)


def mask_count(mask: int) -> int:
    return bin(mask).count("1")
