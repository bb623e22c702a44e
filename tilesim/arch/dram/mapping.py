"""Address mapping: which bits of a byte address pick channel, bank group, bank, row, column.

A mapping is written from the most to the least significant field, ``"ro-co-ba-bg-ch-co:4"``:
fields ``ch`` (channel, across all devices), ``bg`` (bank group), ``ba`` (bank in its group),
``ro`` (row), ``co`` (column, in access granules of one burst). Below the fields sit the byte
offset bits inside one granule. A field may be split: every piece but one gives its width in
bits (``co:4``), the piece without a width takes the rest; the later (less significant) piece
holds the low bits of the field. Field sizes need not be powers of two (five HBM3 stacks give
160 channels): the address, in granules, is read as a mixed-radix number, least significant
piece first, so ``ch`` takes ``a % channels`` and so on. Whatever is left above the top piece is
dropped: addresses wrap at the modelled capacity.

The default for the 32 B-granule standards, ``ro-co-ba-bg-ch-co:4``, keeps 512 B (16 granules)
in one channel and row, then moves to the next channel; consecutive 512 B chunks of one channel
fall in different bank groups (tCCD_S, not tCCD_L, between them), then banks, then the rest of
the row. So a stream spreads over every channel at once and a request of up to 512 B is served
by one row of one bank (the chip loop's DMA must not cross a ``chunk_bytes`` boundary).

With ``controller.channel_hash`` the channel becomes (channel + A) mod channels, A being the
address above the (last) channel piece: a permutation of the channels for every A, so a stream
still spreads evenly and a chunk still sits in one channel, but a power-of-two stride (the rows
of a row-major matrix) no longer camps on channels / gcd(stride, channels) of them (like the
XOR hashing of GPU memory controllers; Zhang, Zhu and Zhang, "A permutation-based page
interleaving scheme", MICRO 2000, for the idea).

The channel hash leaves the bank fields alone, so those strided rows, once in one channel, camp
on one bank group (rows 4 KiB apart: every column command waits tCCD_L) or one bank (8 KiB: a
row conflict every other read). ``controller.bank_hash`` applies that paper's permutation to the
banks: the address above the bank fields, XOR-folded to the bank index's width (4 bits for 16
banks), is added to the bank group (its low part, mod bank groups) and the bank in its group
(the rest). For fixed upper bits that is a permutation, so a stream still visits every bank,
and a chunk keeps one bank and row; 256 B reads 8 KiB apart go from 32% of a stream's
bandwidth to all of it on h100-like (tests/arch/test_dram.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FIELDS = ("ch", "bg", "ba", "ro", "co")
"""Field ids, in the order the compiled arrays use (0 = channel ... 4 = column)."""


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping, pieces least significant first."""

    text: str
    field: np.ndarray      # int64[n_piece]: index into FIELDS
    radix: np.ndarray      # int64[n_piece]: values this piece takes
    mult: np.ndarray       # int64[n_piece]: weight of this piece inside its field
    chunk_granules: int    # granules guaranteed to share channel, bank and row (aligned)


def parse(text: str, sizes: dict[str, int]) -> Mapping:
    """Parse ``text`` for field sizes ``sizes`` (ch, bg, ba, ro, co); ValueError says why not."""
    tokens = [t.strip() for t in str(text).split("-")]
    pieces: list[tuple[str, int | None]] = []
    for tok in tokens:
        name, _, bits = tok.partition(":")
        if name not in FIELDS:
            raise ValueError(f"{tok!r} is not a field (fields: {', '.join(FIELDS)}, written "
                             f"from most to least significant, e.g. 'ro-co-ba-bg-ch-co:4')")
        if bits:
            if not bits.isdigit() or int(bits) < 1:
                raise ValueError(f"{tok!r}: a width is a whole number of bits >= 1")
            pieces.append((name, int(bits)))
        else:
            pieces.append((name, None))
    radix_of: dict[int, int] = {}
    for f in FIELDS:
        mine = [i for i, (n, _) in enumerate(pieces) if n == f]
        if not mine:
            raise ValueError(f"field {f!r} is missing (every one of {', '.join(FIELDS)} must "
                             f"appear)")
        size = sizes[f]
        free = [i for i in mine if pieces[i][1] is None]
        if len(mine) == 1:
            w = pieces[mine[0]][1]
            if w is not None and 2**w != size:
                raise ValueError(f"{f}:{w} gives {2**w} values but {f} has {size}")
            radix_of[mine[0]] = size
            continue
        if len(free) != 1:
            raise ValueError(f"field {f!r} is split: give every piece but one a width in bits")
        if size & (size - 1):
            raise ValueError(f"field {f!r} has {size} values, not a power of two; it cannot "
                             f"be split")
        total = int(math.log2(size))
        used = sum(pieces[i][1] for i in mine if pieces[i][1] is not None)
        if used > total:
            raise ValueError(f"the pieces of {f!r} take {used} bits but it has {total}")
        for i in mine:
            w = pieces[i][1]
            radix_of[i] = 2**(total - used) if w is None else 2**w
    order = list(range(len(pieces)))[::-1]          # least significant first
    field, radix, mult = [], [], []
    weight = {f: 1 for f in FIELDS}
    for i in order:
        f = pieces[i][0]
        field.append(FIELDS.index(f))
        radix.append(radix_of[i])
        mult.append(weight[f])
        weight[f] *= radix_of[i]
    chunk = 1
    for i in order:
        if pieces[i][0] != "co":
            break
        chunk *= radix_of[i]
    as64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return Mapping(str(text), as64(field), as64(radix), as64(mult), chunk)


def decode(m: Mapping, addr: int, granule_bytes: int) -> dict[str, int]:
    """Plain-Python decode of one byte address (tests compare the numba one against it)."""
    a = int(addr) // granule_bytes
    out = {f: 0 for f in FIELDS}
    for f, r, w in zip(m.field, m.radix, m.mult):
        out[FIELDS[f]] += (a % int(r)) * int(w)
        a //= int(r)
    return out
