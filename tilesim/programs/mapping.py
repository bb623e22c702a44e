"""Mapping: how one matmul is cut into tiles and spread over the cores.

A matmul ``Y[m x n] = X[m x k] @ W[k x n]`` (``count`` independent ones for per-head or
per-expert products) is cut into *n-tiles* of ``w`` columns and *m-blocks* of ``mb`` rows. A
unit of work is one (product, m-block, n-tile); the cores take contiguous runs of units.
Inside a unit the matrix engine walks K in steps of the array's rows: per step and per
sub-tile of at most the array's columns (one, unless ``w`` is wider than the array) one
``ldw`` of a ``kt x cols`` weight tile and one ``mm`` that streams the m-block through it,
accumulating into a ``mb x w`` tile (acc dtype) that is converted and stored when K is done.
Weights stream from DRAM in chunks of ``kl`` rows (several array-row steps per DMA), double
buffered; X is either resident (its ``mb x k`` block loaded once per m-block and reused for
every n-tile of the core) or streamed beside the weights.

*Multicast groups.* Cores that work on the same m-block need the same X, cores on the same
n-tile the same weights. With a grid of ``gm x gn`` cores (``gm * gn > 1``) a group works on
``gm`` m-blocks times ``gn`` n-tiles at once, core (a, b) on m-block a and n-tile b: each X
chunk is read from DRAM once and multicast to the ``gn`` cores of its row, each weight chunk
once and multicast to the ``gm`` cores of its column (LOAD with dst_core, like H100 TMA
multicast in a cluster or Tenstorrent's NoC multicast); ``gm * gn`` is at most
``cores.dma.multicast_cores``, and every core of a row (column) issues a share of the row's X
(the column's W) chunk, so no one DMA engine's outstanding requests limit a group. The cores
of a group step through their chunks together: a slot is refilled when every core of the
group has used it. X is streamed in this mode (never resident).

The search (:func:`plan_matmul`) is analytic: for every candidate (w, mb, kl, resident, gm,
gn) that fits the SRAM with double buffering it estimates

    DRAM bytes = weight bytes x ceil(m-blocks / gm)
                 + X bytes x (ceil(n-tiles / gn), or the cores that load it if resident)
                 + Y bytes
    time      >= max(DRAM bytes / peak DRAM bandwidth,
                     per-core MM streaming cycles of its busiest core)

and keeps the fastest, then the one with the least DRAM traffic, then the array's width (of
wider tiles, the narrowest: more units to spread), then weight chunks nearest ``KL_TARGET``
K rows, then the larger. Two things the estimate does not see are rules, since without them
more SRAM made plans slower: the size of a chunk sets how well loads and products overlap
(``KL_TARGET``), and streamed X is loaded in pieces of ``kl`` elements a row (a strided DMA),
each of which takes at least a NoC flit, so plans whose pieces are shorter than
``noc.link_width_bytes`` are left out unless ``kl`` is all of K or asked for (with 640 KiB
of SRAM, h100-like's 1024 x 2048 @ 2048 x 14336 took 1024-row blocks and 32-row chunks, 64 B
pieces in 256 B flits, for 44% less traffic by the estimate, and 620 K cycles against 460 K
with 256 KiB; measured 2026-12-03). A multicast grid must beat the best plan without one by
``MCAST_GAIN`` of the estimated time: groups step in lockstep, which the estimate does not
see, so a grid that only trims a little X traffic (batch-1 decode) is not worth it. A search
takes 1 to 25 ms per op on h100-like shapes (48 decode and prefill shapes, median 10-15 ms;
measured 2026-12-03 on a 2-core machine, as with the rules before them).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from tilesim.config import ChipConfig
from tilesim.dtypes import DTYPES

ALIGN = 256
WIDE = (2, 4, 8)
"""n-tiles of this many times the array's columns are tried too: the core runs them as
sub-tiles, so each X chunk it reads meets more weights (fewer X re-reads where the arrays are
narrow, e.g. 32 columns), at the cost of a wider accumulator. On blackhole-like-gddr6 (32 x 32
arrays) a 512 x 14336 @ 14336 x 4096 matmul reads 176 MB instead of 235 MB and takes 553 K
cycles instead of 712 K. Two things the estimate does not see limit them: streamed X pieces (a
row's ``kl`` elements) must fill a NoC flit (with 64 B pieces in 256 B flits, h100-like's
``kl`` 32, llama-3-8b's prefill-512 took 2.5% longer for 23% fewer bytes; now a rule for every
plan, module doc), and a unit needs at least four K chunks (with two, the first, large,
chunk's load is not hidden: 256 x 2048 @ 2048 x 4096 there took 97.4 K cycles against 92.3 K).
Only for more X rows than the array has: with fewer (decode) each weight is used for few
rows, the op streams weights, and what sets its speed is how many cores stream them
(deepseek-v3's 8 x 16384 @ 16384 x 7168 at batch 8 took 256-column tiles on 28 of h100-like's
132 cores, 242 MB by the estimate against 264 MB for 64-column tiles without multicast; it
keeps 64-column tiles in multicast groups on 112 cores, 237 MB)."""
KL_TARGET = 512
"""K rows per weight chunk the search prefers among plans of equal estimate and traffic (the
nearest, in powers of two; then the larger). Chunks that are too large leave a core's work
unpipelined (the first chunk's load and the last one's products overlap nothing), chunks
that are too small pay a DMA, a semaphore and a group step each. Measured 2026-12-03, the
op's cycles at each kl over the best (single matmuls, plans otherwise fixed): tpu-v4i-like
1 x 4096 @ 4096 x 11008: kl 128 1.73, 256 1.10, 512 1.00, 1024 1.02, 2048 1.07, 4096 1.22;
8 x 7168 @ 7168 x 1536: 1.70, 1.12, 1.00, 1.03, 1.14, 1.25, 7168 1.27; blackhole-like-hbm3
1 x 3072 @ 3072 x 768: kl 32 3.91, 64 2.25, 128 1.59, 256 1.18, 512 1.00, 1024 1.09, 2048
1.31; h100-like-hbm3 64 x 768 @ 768 x 768: kl 128 1.46, 256 1.26, 512 1.01, 768 1.00. The
search used to take the largest chunk that fits: the whole K on tpu-v4i-like's 36 MiB cores,
and, with 640 KiB of SRAM on h100-like instead of 256 KiB, 2048 instead of 512 for the
batch-1 decode projections of a d_model 2048 model, whose step then took 231.6 K cycles
instead of 212.5 K: more SRAM, 9% slower."""
CHUNK_MIN_BYTES = 32 << 10
"""Weight bytes a chunk should have at least, which moves the preferred ``kl`` of narrow tiles
up: at 512 rows an 8-column tile (a router over 8 experts) has 8 KiB chunks, and h100-like's
64 x 4096 @ 4096 x 8 took 1.29x the cycles it takes with 2048-row (32 KiB) ones."""
WIDE_GAIN = 0.05
"""A plan with n-tiles wider than the array is chosen over the best without only when it
saves at least this fraction of the estimated time or of the DRAM bytes
(:func:`_narrow_or_wide`)."""
MCAST_GAIN = 0.05
"""A multicast grid is chosen only when its time estimate is at least this fraction lower than
the best plan without one."""


def nbytes(elements: int, dtype: str) -> int:
    """Bytes ``elements`` values of ``dtype`` take (sub-byte types packed)."""
    return (elements * DTYPES[dtype].bits + 7) // 8


@dataclass(frozen=True)
class MatmulPlan:
    """Tile sizes (elements) and the split over cores of one matmul."""

    w: int              # n-tile width (sub-tiles of the array's cols when wider)
    mb: int             # m-block rows
    kt: int             # K per ldw (<= array rows)
    kl: int             # K rows per weight DMA chunk (a multiple of kt, or all of K)
    resident: bool      # X block [mb x k] loaded once per m-block
    cores: int          # cores that get work
    units: int          # (product, m-block, n-tile) units in all
    sram_bytes: int     # per core, with double buffering
    dram_bytes: int     # estimated traffic
    est_cycles: float   # the estimate the search minimised
    gm: int = 1         # multicast grid: m-blocks per group (weights multicast to gm cores)
    gn: int = 1         # n-tiles per group (X multicast to gn cores)


def sram_need(mb, w, kl, k, resident, in_dt, w_dt, acc_dt, act_dt, w_store=None,
              bias=False) -> int:
    """Per-core SRAM bytes of a plan: X (resident block or two streamed slots), two weight
    slots of kl x w, the accumulator and the converted output tile (and, with ``bias``, the
    tile's slice of the bias). Weights stored as ``w_store`` (default ``w_dt``, the array's
    type) and X in ``act_dt`` other than ``in_dt`` also need staging buffers for the vector
    engine's conversion (codegen.emit_matmul)."""
    w_store = w_store or w_dt
    bufs = [nbytes(mb * k, in_dt)] if resident else [nbytes(mb * kl, in_dt)] * 2
    if act_dt != in_dt:
        bufs += [nbytes(mb * k, act_dt)] if resident else [nbytes(mb * kl, act_dt)] * 2
    bufs += [nbytes(kl * w, w_dt)] * 2
    if w_store != w_dt:
        bufs += [nbytes(kl * w, w_store)] * 2
    bufs += [nbytes(mb * w, acc_dt), nbytes(mb * w, act_dt)]
    if bias:
        bufs.append(nbytes(w, act_dt))
    return sum(align(b) for b in bufs)      # each buffer starts ALIGN-aligned (Emitter.alloc)


def plan_matmul(m: int, k: int, n: int, count: int, cfg: ChipConfig, *, in_dt: str,
                w_dt: str, act_dt: str, only: dict | None = None,
                bias: bool = False) -> MatmulPlan:
    """The best plan for ``count`` products of ``m x k @ k x n`` (plus a bias row, with
    ``bias``) on ``cfg``; with ``only``
    (MatmulPlan field -> value) the best among the plans with those values (what-if studies and
    tests: ``{"gm": 1, "gn": 1}`` is the best plan without multicast)."""
    only = only or {}
    fields = MatmulPlan.__dataclass_fields__
    unknown = sorted(set(only) - set(fields))
    if unknown:
        from tilesim.errors import InputError
        raise InputError(f"plan fields {unknown} are not fields of a matmul plan "
                         f"(allowed: {', '.join(fields)})")

    def allowed(**f) -> bool:
        return all(f[key] == v for key, v in only.items() if key in f)

    sa = cfg.cores.systolic
    rows, cols = sa.rows, sa.cols
    acc_dt = sa.acc_dtype
    cores = cfg.cores.count
    size = cfg.cores.sram.size_bytes
    kt = min(rows, k)
    mcast = cfg.cores.dma.multicast_cores    # the largest group that may share a tile
    peak = dram_bytes_per_cycle(cfg)
    flit = cfg.noc.link_width_bytes
    best = {False: None, True: None}       # without multicast, by "w wider than the array"
    best_mc = {False: None, True: None}    # with a multicast grid
    widths = sorted({min(cols, n)} | {w for w in (cols // 2, cols // 4, cols // 8)
                                      if w >= 8 and w < n}
                    | {min(n, cols * f) for f in WIDE if cols * f // 2 < n and m > rows})
    mbs = sorted({min(m, x) for x in (m, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 1)})
    kls = sorted({min(k, kt * f) for f in (1, 2, 4, 8, 16, 32, 64)})
    for w in widths:
        n_tiles = -(-n // w)
        subs = -(-w // cols)                 # ldw + mm pairs per K step
        for mb in mbs:
            m_blocks = -(-m // mb)
            units = count * m_blocks * n_tiles
            per_core = -(-units // cores)
            used = min(cores, units)
            for resident in (True, False):
                for kl in kls:
                    need = sram_need(mb, w, kl, k, resident, sa.input_dtype, sa.weight_dtype,
                                     acc_dt, act_dt, w_store=w_dt, bias=bias)
                    if need > size:
                        continue
                    if not allowed(w=w, mb=mb, kl=kl):
                        continue
                    if w > cols and k < 4 * kl:
                        continue                 # see WIDE
                    if (not resident and nbytes(kl, act_dt) < flit and kl < k
                            and "kl" not in only):
                        continue                 # X pieces below a flit (module doc)
                    wbytes = count * nbytes(k * n, w_dt) * m_blocks
                    # resident X is loaded once per (core, m-block) it works on
                    x_copies = min(used, n_tiles * count) if resident else n_tiles
                    xbytes = count * nbytes(m * k, act_dt) * max(1, x_copies)
                    ybytes = count * nbytes(m * n, act_dt)
                    dram = wbytes + xbytes + ybytes
                    k_steps = -(-k // kt)
                    mm = per_core * k_steps * subs * (mb + rows)   # rows stream + ldw
                    est = max(dram / peak, mm)
                    key = (est, dram, -min(w, cols), w, _kl_off(kl, w, w_dt), -kl)
                    wide = w > cols
                    if allowed(resident=resident, gm=1, gn=1) and (best[wide] is None
                                                                   or key < best[wide][0]):
                        best[wide] = (key, MatmulPlan(w, mb, kt, kl, resident, used, units,
                                                      need, int(dram), float(est)))
                    if resident:
                        continue
                    for gm, gn in _grids(m_blocks, n_tiles, min(cores, mcast)):
                        if not allowed(gm=gm, gn=gn):
                            continue
                        groups = cores // (gm * gn)
                        supers = count * -(-m_blocks // gm) * -(-n_tiles // gn)
                        dram = (count * nbytes(k * n, w_dt) * -(-m_blocks // gm)
                                + count * nbytes(m * k, act_dt) * -(-n_tiles // gn) + ybytes)
                        mm = -(-supers // groups) * k_steps * subs * (mb + rows)
                        est = max(dram / peak, mm)
                        key = (est, dram, -min(w, cols), w, _kl_off(kl, w, w_dt), -kl, gm * gn)
                        if best_mc[wide] is None or key < best_mc[wide][0]:
                            busy = min(cores, supers * gm * gn, groups * gm * gn)
                            best_mc[wide] = (key, MatmulPlan(w, mb, kt, kl, False, busy, units,
                                                             need, int(dram), float(est), gm,
                                                             gn))
    best, best_mc = _narrow_or_wide(best), _narrow_or_wide(best_mc)
    if best_mc is not None and (best is None or
                                best_mc[1].est_cycles <= (1 - MCAST_GAIN) * best[1].est_cycles):
        return best_mc[1]
    if best is None:
        from tilesim.errors import InputError
        if only:
            raise InputError(f"{cfg.name}: no plan of a {m} x {k} @ {k} x {n} matmul has "
                             f"{only} (fields of MatmulPlan; grids: gm <= m-blocks, gn <= "
                             f"n-tiles, gm * gn <= cores)")
        raise InputError(f"{cfg.name}: a {m} x {k} @ {k} x {n} matmul does not fit "
                         f"cores.sram.size_bytes = {size} even with one-row tiles")
    return best[1]


def _kl_off(kl: int, w: int, w_dt: str) -> int:
    """How far ``kl`` is from the preferred chunk (KL_TARGET rows, and at least CHUNK_MIN_BYTES
    of weights), in whole powers of two."""
    target = max(KL_TARGET, CHUNK_MIN_BYTES // nbytes(w, w_dt))
    return abs(round(math.log2(kl / target)))


def _narrow_or_wide(best: dict):
    """The better of the best plan with n-tiles at most the array's width (``best[False]``)
    and the best with wider ones (``best[True]``), each a (key, plan) or None. A wide plan
    must be at least as fast by the estimate and gain ``WIDE_GAIN`` of its time or of its
    DRAM traffic: a small gain in the estimate is not worth fewer, larger units (without this
    rule, and were wide tiles tried for decode, llama-3-8b's batch-1 gate_up on h100-like
    would take 512-column tiles for 0.3% fewer DRAM bytes, streaming its weights through 56 of
    the 132 cores)."""
    narrow, wide = best[False], best[True]
    if wide is None or narrow is None:
        return narrow or wide
    a, b = narrow[1], wide[1]
    if b.est_cycles <= a.est_cycles and (b.est_cycles <= (1 - WIDE_GAIN) * a.est_cycles
                                         or b.dram_bytes <= (1 - WIDE_GAIN) * a.dram_bytes):
        return wide
    return narrow


def _grids(m_blocks: int, n_tiles: int, cores: int) -> list[tuple[int, int]]:
    """Multicast grids (gm, gn) worth trying: powers of two and the exact block and tile counts,
    no larger than those counts, of at most ``cores`` cores, not 1 x 1 (none if cores < 2)."""
    def sizes(limit):
        return sorted({x for x in (1, 2, 4, 8, 16, 32, 64, 128, 256, limit) if x <= limit})
    return [(gm, gn) for gm in sizes(m_blocks) for gn in sizes(n_tiles)
            if 1 < gm * gn <= cores]


def dram_bytes_per_cycle(cfg: ChipConfig) -> float:
    """Peak DRAM bytes per core cycle (inf without off-chip memory)."""
    if cfg.memory is None:
        return float("inf")
    from tilesim.arch import dram
    return dram.peak_gbps(cfg.memory) / cfg.clock_ghz


def split(units: int, cores: int) -> list[range]:
    """Contiguous runs of units per core (the first ``units % cores`` cores get one more)."""
    base, extra = divmod(units, cores)
    out, start = [], 0
    for c in range(cores):
        size = base + (1 if c < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def balance(costs: list[int], cores: int) -> list[list[int]]:
    """Units per core: :func:`split`'s contiguous runs when every unit costs the same or no
    core gets two; else the costliest unit first, each to the core with the least cost so far
    (the first such core on a tie; LPT, within 4/3 of the best makespan), each core's units in
    unit order. Causal attention's query blocks cost in proportion to the keys they see, so
    contiguous runs of them left the last query blocks' cores with twice the mean work."""
    if len(set(costs)) <= 1 or len(costs) <= cores:
        return [list(r) for r in split(len(costs), cores)]
    out: list[list[int]] = [[] for _ in range(cores)]
    heap = [(0, c) for c in range(cores)]
    for u in sorted(range(len(costs)), key=lambda u: (-costs[u], u)):
        load, c = heapq.heappop(heap)
        out[c].append(u)
        heapq.heappush(heap, (load + costs[u], c))
    return [sorted(units) for units in out]


def row_blocks(rows: int, cols_bytes: int, budget: int) -> int:
    """Rows per block for a row-wise vector op whose per-row footprint is ``cols_bytes``."""
    return max(1, min(rows, budget // max(cols_bytes, 1)))


def align(x: int, to: int = ALIGN) -> int:
    return -(-x // to) * to


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

