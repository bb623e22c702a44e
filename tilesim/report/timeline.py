"""The timeline of a run: a Gantt chart of every engine of every core, plus DMA traffic.

One row per non-empty instruction queue, top to bottom: core 0's matrix, vector, dma0, dma1,
..., then core 1's. Each instruction is a bar from ``t_start`` to ``t_end`` (core cycles),
coloured by what it does (ldw, mm, each vector op, load, store, copy). Where an engine has
several instructions in flight at once (an MM draining while the next one streams, a DMA
engine issuing its next descriptor while the last one's requests are still out), the row is
split into lanes so that the bars do not hide each other.

Below it, the DMA traffic panel shows load, store and copy bandwidth over time in GB/s. RunStats
keeps per-instruction times, not per-request ones, so each DMA instruction's bytes are spread
evenly over its duration: a smoothed picture of the traffic, exact in its total.

Large runs stay fast: every category is one PolyCollection, whatever the number of bars, and
with more than ``max_bars`` instructions, bars of the same category in the same lane closer
than about a pixel are merged (the picture is the same at the resolution it is drawn).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from tilesim.errors import InputError

MAX_LANES = 4
"""Lanes per row at most; further overlapping instructions share the lane that frees first."""

PIXELS = 2400
"""Horizontal resolution the merging of bars assumes (the PNG is about 1200 px wide, x2)."""

COLOURS = {
    "ldw": "#17becf", "mm": "#1f77b4",
    "add": "#ff7f0e", "sub": "#ffbb78", "mul": "#e377c2", "max": "#f7b6d2",
    "recip": "#bcbd22", "exp": "#8c564b", "rsqrt": "#c49c94", "silu": "#dbdb8d",
    "gelu": "#aec7e8", "reduce_sum": "#98df8a", "reduce_max": "#ff9896", "rope": "#c5b0d5",
    "convert": "#7f7f7f", "copy_v": "#c7c7c7",
    "load": "#2ca02c", "store": "#d62728", "copy": "#9467bd",
    "nop": "#d9d9d9", "halt": "#000000",
}
"""Colour of each category; vector ``copy`` is ``copy_v`` (labelled 'copy (vector)')."""

LABELS = {"copy": "copy (DMA)", "copy_v": "copy (vector)"}


def categories(program) -> tuple[np.ndarray, list[str]]:
    """(int code per instruction, names of the codes): the opcode, or the vector op's name,
    in the order of COLOURS (matrix, vector, DMA)."""
    from tilesim.isa.opcodes import Op, VecOp

    ins = program.instrs
    names: list[str] = []
    code = np.zeros(len(ins), np.int64)
    op = ins["op"].astype(np.int64)
    vop = ins["vop"].astype(np.int64)
    key = np.where(op == int(Op.VOP), 1000 + vop, op)
    found = {}
    for k in np.unique(key):
        if k >= 1000:
            v = VecOp(int(k) - 1000).name.lower()
            found["copy_v" if v == "copy" else v] = k
        else:
            found[Op(int(k)).name.lower()] = k
    order = list(COLOURS)
    for name in sorted(found, key=lambda x: order.index(x) if x in order else len(order)):
        code[key == found[name]] = len(names)
        names.append(name)
    return code, names


def rows_and_lanes(stats, program) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray,
                                            np.ndarray]:
    """Row labels, and per instruction its row, lane and the lanes of its row.

    Returns (labels, row, lane, lanes_of_row[row], core_of_row[row]). Rows are the non-empty
    queues in core, then engine order."""
    from tilesim.isa.opcodes import engine_name

    n = len(program.instrs)
    row = np.zeros(n, np.int64)
    lane = np.zeros(n, np.int64)
    labels: list[str] = []
    nlanes: list[int] = []
    cores: list[int] = []
    for c in range(program.n_cores):
        for e in range(program.engines_per_core):
            a = int(program.queue_start[c, e])
            b = a + int(program.queue_len[c, e])
            if b == a:
                continue
            r = len(labels)
            labels.append(f"core {c} {engine_name(e)}")
            cores.append(c)
            row[a:b] = r
            lane[a:b] = _lanes(stats.t_start[a:b], stats.t_end[a:b])
            nlanes.append(int(lane[a:b].max()) + 1)
    return labels, row, lane, np.array(nlanes, np.int64), np.array(cores, np.int64)


def _lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Greedy lane per interval (in queue order): the first lane free at its start, else the
    lane that frees first; at most MAX_LANES."""
    n = start.shape[0]
    if n < 2 or np.all(start[1:] >= np.maximum.accumulate(end)[:-1]):
        return np.zeros(n, np.int64)
    out = np.zeros(n, np.int64)
    free_at = [-(1 << 62)] * MAX_LANES
    used = 1
    for i, (s, e) in enumerate(zip(start.tolist(), end.tolist())):
        pick = -1
        for j in range(used):
            if free_at[j] <= s:
                pick = j
                break
        if pick < 0:
            if used < MAX_LANES:
                pick = used
                used += 1
            else:
                pick = min(range(MAX_LANES), key=free_at.__getitem__)
        free_at[pick] = max(free_at[pick], e)
        out[i] = pick
    return out


def merge_bars(group: np.ndarray, start: np.ndarray, end: np.ndarray, gap: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge intervals of the same group whose gap is at most ``gap`` cycles.

    Returns (group, start, end) of the merged bars, sorted by group then start."""
    if start.size == 0:
        return group, start, end
    order = np.lexsort((start, group))
    g, s, e = group[order], start[order].astype(np.float64), end[order].astype(np.float64)
    span = float(e.max() - min(0.0, s.min())) + 2 * gap + 1
    off = (g - g.min()).astype(np.float64) * span       # separates groups in one cummax
    reach = np.maximum.accumulate(e + off)
    new = np.ones(s.size, bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] + off[1:] > reach[:-1] + gap)
    first = np.nonzero(new)[0]
    last = np.append(first[1:], s.size) - 1
    return g[first], s[first], reach[last] - off[last]


def dma_traffic(stats, program, bins: int = 400):
    """(bin edges in cycles, {'load'|'store'|'copy': GB/s per bin}) with each DMA instruction's
    bytes spread evenly over [t_start, t_end)."""
    from tilesim.arch.chip import _BITS
    from tilesim.isa.opcodes import Op

    ins = program.instrs
    cycles = max(int(stats.cycles), 1)
    nb = max(1, min(bins, cycles))
    edges = np.linspace(0.0, float(cycles), nb + 1)
    elems = np.prod(np.maximum(ins["shape"].astype(np.int64), 1), axis=1)
    nbytes = (elems * _BITS[ins["dtype"]] + 7) // 8
    out = {}
    for name, op in (("load", Op.LOAD), ("store", Op.STORE), ("copy", Op.COPY)):
        sel = np.nonzero(ins["op"] == op)[0]
        if not sel.size:
            continue
        s = stats.t_start[sel].astype(np.float64)
        e = np.maximum(stats.t_end[sel].astype(np.float64), s + 1)
        rate = nbytes[sel] / (e - s)                              # bytes per cycle
        t = np.concatenate([s, e])
        d = np.concatenate([rate, -rate])
        order = np.argsort(t, kind="stable")
        t, d = t[order], d[order]
        slope = np.cumsum(d)                                      # after each event
        cum = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(t))])
        total = np.interp(edges, t, cum, left=0.0, right=cum[-1])  # bytes moved by each edge
        out[name] = np.diff(total) / np.diff(edges) * stats.clock_ghz  # bytes/ns = GB/s
    return edges, out


def plot_timeline(stats, program, path, title: str | None = None, max_bars: int = 20000,
                  traffic: bool = True) -> Path:
    """Draw the Gantt chart of ``stats`` (a RunStats of ``program``) into ``path`` (a PNG,
    written atomically). ``max_bars``: above this many instructions, bars closer than a pixel
    merge. ``traffic``: add the DMA traffic panel. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    path = Path(path)
    labels, row, lane, nlanes, core_of_row = rows_and_lanes(stats, program)
    code, names = categories(program)
    t0 = stats.t_start.astype(np.float64)
    t1 = stats.t_end.astype(np.float64)
    cycles = max(int(stats.cycles), 1)
    n_rows = len(labels)
    n = t0.size
    group = (row * MAX_LANES + lane) * len(names) + code
    if n > max_bars:
        group, t0, t1 = merge_bars(group, t0, t1, gap=cycles / PIXELS)
    cat = group % max(len(names), 1)
    rl = group // max(len(names), 1)
    r, ln = rl // MAX_LANES, rl % MAX_LANES
    h = 0.8 / nlanes[r]
    y0 = r - 0.4 + ln * h                  # rows grow downwards (y axis inverted)
    y1 = y0 + h * 0.92

    edges, rates = dma_traffic(stats, program) if traffic else (None, {})
    show_traffic = bool(rates)
    row_in = min(0.32, max(0.06, 12.0 / max(n_rows, 1)))
    gantt_h = min(max(1.2, row_in * n_rows + 0.8), 24.0)
    height = gantt_h + (1.8 if show_traffic else 0.0) + 0.9
    if show_traffic:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, height), sharex=True,
                                      gridspec_kw={"height_ratios": [gantt_h, 1.8]})
    else:
        fig, ax = plt.subplots(figsize=(12, height))
        ax2 = None
    handles = []
    for k, name in enumerate(names):
        sel = np.nonzero(cat == k)[0]
        if not sel.size or name == "halt":
            continue
        verts = np.empty((sel.size, 4, 2))
        verts[:, 0, 0] = verts[:, 1, 0] = t0[sel]
        verts[:, 2, 0] = verts[:, 3, 0] = np.maximum(t1[sel], t0[sel] + cycles / PIXELS)
        verts[:, 0, 1] = verts[:, 3, 1] = y0[sel]
        verts[:, 1, 1] = verts[:, 2, 1] = y1[sel]
        colour = COLOURS.get(name, "#7f7f7f")
        few = sel.size <= 400
        ax.add_collection(PolyCollection(verts, facecolors=colour,
                                         edgecolors="white" if few else "none",
                                         linewidths=0.4 if few else 0.0))
        handles.append(Patch(facecolor=colour, label=LABELS.get(name, name)))
    ax.set_xlim(0, cycles)
    ax.set_ylim(n_rows - 0.5, -0.5)
    if n_rows <= 60:
        ax.set_yticks(range(n_rows), labels, fontsize=8 if n_rows <= 24 else 6)
    else:                                   # label each core once
        firsts = [i for i in range(n_rows) if i == 0 or core_of_row[i] != core_of_row[i - 1]]
        step = max(1, len(firsts) // 40)
        ax.set_yticks(firsts[::step], [f"core {core_of_row[i]}" for i in firsts[::step]],
                      fontsize=6)
    for i in range(1, n_rows):
        if core_of_row[i] != core_of_row[i - 1]:
            ax.axhline(i - 0.5, color="0.6", linewidth=0.5)
    ax.grid(axis="x", color="0.9", linewidth=0.5)
    ax.set_axisbelow(True)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
                  frameon=False, title="instruction", title_fontsize=8)
    merged = f", bars closer than {cycles / PIXELS:.3g} cycles merged" if n > max_bars else ""
    ax.set_title(title or f"{stats.program} on {stats.chip}: {n} instructions, {cycles} cycles "
                 f"({stats.seconds * 1e6:.4g} us){merged}", fontsize=9)
    clock = stats.clock_ghz
    top = ax.secondary_xaxis("top", functions=(lambda c: c / (clock * 1e3),
                                               lambda us: us * clock * 1e3))
    top.set_xlabel("us", fontsize=8)
    top.tick_params(labelsize=7)
    ax.tick_params(axis="x", labelsize=7)
    if ax2 is not None:
        centres = (edges[:-1] + edges[1:]) / 2
        for name, gbps in rates.items():
            ax2.plot(centres, gbps, drawstyle="steps-mid", linewidth=1.0,
                     color=COLOURS[name], label=f"{name}")
        peak = (stats.dram or {}).get("peak_gbps")
        if peak:
            ax2.axhline(peak, color="0.4", linestyle="--", linewidth=0.8,
                        label="DRAM peak")
        ax2.set_ylim(bottom=0)
        ax2.set_ylabel("DMA GB/s", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False,
                   title="per instruction,\nspread evenly", title_fontsize=7)
        ax2.grid(color="0.9", linewidth=0.5)
        ax2.set_xlabel("cycle", fontsize=8)
    else:
        ax.set_xlabel("cycle", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    """Write the figure as PNG atomically (temporary file in the same folder, then rename)."""
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
        os.close(fd)
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise InputError(f"{path}: cannot write the timeline ({e.strerror or e})") from None
    finally:
        plt.close(fig)
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
