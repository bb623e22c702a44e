"""Example tile programs, for the tests and the teaching material.

The ``.tasm`` files next to this module are written by hand, with comments that explain every
line. :func:`gemm_tile_loop` writes the same single-core GEMM tile loop for any size, with one
or two SRAM slots, so the files' programs can be checked against it and the loop can be made
long enough to measure (``tests/arch/test_chip.py`` does both).

Files:

``gemm_single_buffered.tasm``
    C[16x4] = A[16x16] x B[16x4] (int8 in, int32 out) on teach-4x4, one SRAM slot: every load
    waits for the matrix engine to finish with the slot, so load and compute add up.
``gemm_double_buffered.tasm``
    The same GEMM with two slots: the DMA fills one while the array works on the other, so per
    k-tile the loop takes about max(load, compute) instead of their sum.
``gemm_two_core.tasm``
    The same GEMM split over the two cores of teach-2core by K: each core multiplies its half,
    core 1 sends its partial C over the NoC into core 0's SRAM (a DMA ``copy``), core 0's
    vector engine adds the two and stores C.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """The file of example ``name`` (with or without ``.tasm``)."""
    return HERE / (name if name.endswith(".tasm") else name + ".tasm")


def _align(x: int, to: int = 256) -> int:
    return -(-x // to) * to


def gemm_tile_loop(m: int, k: int, n: int, tile_k: int, slots: int,
                   a_tiled: bool = False, name: str | None = None) -> str:
    """Tile assembly of C[m x n] (int32) = A[m x k] (int8) x B[k x n] (int8) on one core.

    K is cut into ``k / tile_k`` k-tiles. For k-tile t, ``dma0`` loads A[:, t*tk:(t+1)*tk]
    (m x tk) and B[t*tk:(t+1)*tk, :] (tk x n) into SRAM slot t % slots; the matrix engine loads
    the weights (``ldw``), streams the m rows through them (``mm``, accumulating from the
    second k-tile on) and signals the slot empty; ``dma1`` stores C after the last ``mm``.
    ``tile_k`` and ``n`` must fit the array (rows >= tile_k, cols >= n).

    A is row-major (m x k) in DRAM, so each row of an A tile is its own short DMA run and costs
    a whole DRAM burst. With ``a_tiled=True`` DRAM holds A as k-tiles one after another
    (buffer A of shape (k / tile_k, m, tile_k)), so an A tile is one contiguous run: the layout
    a compiler would choose, and the one that lets load and compute times be comparable.

    Semaphores only count up: ``full<s>`` gets two signals per fill of slot s, so the j-th use
    of a slot (j from 1) waits for ``full<s> >= 2j``; the j-th refill waits for
    ``empty<s> >= j - 1``. Regions are 256-byte aligned, DRAM and SRAM alike.
    """
    if k % tile_k or slots not in (1, 2):
        raise ValueError("k must be a multiple of tile_k and slots 1 or 2")
    tiles = k // tile_k
    a_bytes, b_bytes = m * tile_k, tile_k * n
    b_dram = _align(m * k)
    c_dram = _align(b_dram + k * n)
    sram_b = slots * a_bytes
    sram_c = _align(sram_b + slots * b_bytes)
    sems = [f"full{s}" for s in range(slots)] + [f"empty{s}" for s in range(slots)] + ["done"]
    if slots == 1:
        sems = ["full", "empty", "done"]
    sem = (lambda kind, s: kind) if slots == 1 else (lambda kind, s: f"{kind}{s}")
    slot = (lambda s: "") if slots == 1 else (lambda s: str(s))
    name = name or ("gemm_single_buffered" if slots == 1 else "gemm_double_buffered")
    out = [f".program {name} cores=1 dma_engines=2", ".sem " + " ".join(sems),
           f".buffer A  space=dram addr={0:#x}   dtype=int8  shape="
           + (f"{tiles},{m},{tile_k}" if a_tiled else f"{m},{k}"),
           f".buffer B  space=dram addr={b_dram:#x} dtype=int8  shape={k},{n}",
           f".buffer C  space=dram addr={c_dram:#x} dtype=int32 shape={m},{n}"]
    for s in range(slots):
        out.append(f".buffer a{slot(s)} space=sram core=0 addr={s * a_bytes:#x} dtype=int8 "
                   f"shape={m},{tile_k}")
    for s in range(slots):
        out.append(f".buffer b{slot(s)} space=sram core=0 addr={sram_b + s * b_bytes:#x} "
                   f"dtype=int8 shape={tile_k},{n}")
    out.append(f".buffer c  space=sram core=0 addr={sram_c:#x} dtype=int32 shape={m},{n}")

    out.append(".queue core=0 engine=dma0")
    for t in range(tiles):
        s, use = t % slots, t // slots + 1
        wait = f" wait={sem('empty', s)}>={use - 1}" if use > 1 else ""
        a_off = f"+{t * (m * tile_k if a_tiled else tile_k)}" if t else ""
        a_row = tile_k if a_tiled else k
        b_off = f"+{t * tile_k * n}" if t else ""
        out.append(f"    load{wait} src=A{a_off} dst=a{slot(s)} shape={m},{tile_k} "
                   f"src_stride={a_row},1 dst_stride={tile_k},1 dtype=int8 signal={sem('full', s)}")
        out.append(f"    load src=B{b_off} dst=b{slot(s)} shape={tile_k},{n} "
                   f"src_stride={n},1 dst_stride={n},1 dtype=int8 signal={sem('full', s)}")
    out.append(".queue core=0 engine=matrix")
    for t in range(tiles):
        s, use = t % slots, t // slots + 1
        acc = " flags=accumulate" if t else ""
        done = " signal=done" if t == tiles - 1 else ""
        out.append(f"    ldw wait={sem('full', s)}>={2 * use} src=b{slot(s)} k={tile_k} n={n} "
                   f"src_stride={n},0 dtype=int8")
        out.append(f"    mm src=a{slot(s)} dst=c m={m} k={tile_k} n={n} src_stride={tile_k},0 "
                   f"dst_stride={4 * n},0 dtype=int8 dtype2=int32{acc} "
                   f"signal={sem('empty', s)}{done}")
    out.append(".queue core=0 engine=dma1")
    out.append(f"    store wait=done>=1 src=c dst=C shape={m},{n} src_stride={4 * n},4 "
               f"dst_stride={4 * n},4 dtype=int32")
    return "\n".join(out) + "\n"
