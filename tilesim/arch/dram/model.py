"""The DRAM system model: build the tables once, run requests through the numba controllers.

``build(mem)`` turns a :class:`~tilesim.config.MemoryConfig` into a :class:`DramSystem`: the
compiled standard (timings, constraint arrays), the parsed address mapping and the
``DramTables`` namedtuple the kernels in ``tilesim/arch/_engine.py`` read. ``new_state`` makes
the mutable state (one int64 buffer; ``views`` names its parts). ``simulate`` runs a request
trace through the standalone driver and returns a :class:`DramResult` (completion cycles,
counters, optional command trace, energy, summary). The event loop, controller and FR-FCFS
scheduler are documented in ``_engine.py``'s module docstring; this module is Python only.

Closed forms (tests and the CLI use them):

    peak GB/s            = channels x granule bytes / (nBL x tCK)
    unloaded read cycles = nCL + nBL              (row open: a hit)
                         = nRCD + nCL + nBL       (bank closed)
                         = nRP + nRCD + nCL + nBL (another row open: a conflict)
    ACT-rate bound       = channels x bytes per ACT / (tCK x max(nRRD_S, nFAW / 4,
                             nRC / banks, bursts per ACT x max(nBL, nCCD_S)))
                           x (1 - nRFC / nREFI)

The last is what random traffic with one row activation per request can at most reach.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from tilesim.arch.dram import mapping as _mapping
from tilesim.arch.dram.compile import NO_CONSTRAINT, CompiledStandard, compile_standard, lookup
from tilesim.config import DramControllerConfig, MemoryConfig
from tilesim.errors import ConfigError, InputError


TRACE_FIELDS = ("cycle", "channel", "bankgroup", "bank", "row", "column", "command")
"""Columns of the command trace (``_engine``'s ``S.trace``); bank is within its group."""


@dataclass(frozen=True)
class DramSystem:
    """A memory system ready to simulate: what was asked for and the arrays built from it."""

    mem: MemoryConfig
    compiled: CompiledStandard
    n_channels: int
    mapping: _mapping.Mapping
    tables: object                   # _engine.DramTables

    @property
    def std(self):
        return self.compiled.std

    @property
    def tck_ns(self) -> float:
        return self.compiled.tck_ns

    @property
    def timings(self):
        return self.compiled.timings

    @property
    def peak_gbps(self) -> float:
        return self.n_channels * self.compiled.peak_gbps_per_channel

    @property
    def chunk_bytes(self) -> int:
        return self.mapping.chunk_granules * self.std.granule_bytes


def memory(standard: str, devices: int = 1, rate_gbps: float = 0.0, overrides=None,
           controller: DramControllerConfig | None = None) -> MemoryConfig:
    """A MemoryConfig from plain arguments (the CLI's and the tests' way in)."""
    return MemoryConfig(standard=standard, devices=devices, data_rate_gbps=rate_gbps,
                        timing_overrides=dict(overrides or {}),
                        controller=controller or DramControllerConfig())


def build(mem: MemoryConfig) -> DramSystem:
    """Compile the standard and the mapping into the kernel tables; ConfigError on bad input
    (keys named as in a chip config's ``memory`` block)."""
    from tilesim.arch._engine import DramTables

    std = lookup(mem.standard)
    if mem.devices < 1:
        raise ConfigError(f"devices: {mem.devices} is not allowed (at least 1 device)")
    lo, hi = std.rate_range_gbps
    if mem.data_rate_gbps and not lo - 1e-9 <= mem.data_rate_gbps <= hi + 1e-9:
        raise ConfigError(f"data_rate_gbps: {mem.data_rate_gbps} is not allowed (a per-pin "
                          f"rate from {lo} to {hi} Gb/s for {std.name})")
    cs = compile_standard(std, mem.data_rate_gbps or None, mem.timing_overrides)
    n_ch = mem.devices * std.channels_per_device
    if std.banks > 63:
        raise ConfigError(f"{std.name}: {std.banks} banks per channel (at most 63)")
    ctl = mem.controller
    text = std.default_mapping if ctl.address_mapping == "default" else ctl.address_mapping
    try:
        m = _mapping.parse(text, {"ch": n_ch, "bg": std.bankgroups, "ba": std.banks_per_group,
                                  "ro": std.rows, "co": std.columns})
    except ValueError as e:
        raise ConfigError(f"controller.address_mapping: {text!r} is not allowed ({e})") from None
    g = std.granule_bytes
    if g & (g - 1):
        raise ConfigError(f"{std.name}: granule of {g} B is not a power of two")
    t = cs.timings
    wq = ctl.write_queue
    wq_hi = max(1, math.ceil(ctl.write_high_watermark * wq))
    wq_lo = min(wq_hi - 1, math.floor(ctl.write_low_watermark * wq))
    shift = [int(math.log2(r)) if r & (r - 1) == 0 else -1 for r in m.radix]
    win = np.array([cs.win_before, cs.win_after, cs.win_len, cs.win_lat],
                   dtype=np.int64).reshape(4, -1)
    mp = np.array([m.field, m.radix, shift, m.mult], dtype=np.int64)
    masks = [sum(1 << f for f in range(5) if cs.lat[lv, c, f] > NO_CONSTRAINT)
             for lv in range(3) for c in range(5)]
    lat_all = cs.lat.max(axis=0).ravel()
    tab = np.concatenate([cs.lat.ravel(), masks, lat_all, win.ravel(),
                          mp.ravel()]).astype(np.int64)
    bpg = std.banks_per_group
    if bpg & (bpg - 1):
        raise ConfigError(f"{std.name}: {bpg} banks per group is not a power of two")
    tables = DramTables(
        n_ch=n_ch, n_bg=std.bankgroups, n_bpg=bpg, bpg_shift=int(math.log2(bpg)),
        n_banks=std.banks, gran_bytes=g, gran_shift=int(math.log2(g)), columns=std.columns,
        chunk_bytes=m.chunk_granules * g, rq_cap=ctl.read_queue, wq_cap=wq, wq_hi=wq_hi,
        wq_lo=wq_lo, closed_page=1 if ctl.page_policy == "closed" else 0, nBL=t["nBL"],
        rd_lat=t["nCL"] + t["nBL"], wr_lat=t["nCWL"] + t["nBL"], nREFI=t["nREFI"],
        exact_next=0, ch_hash=int(ctl.channel_hash), bank_hash=int(ctl.bank_hash),
        bank_bits=max(1, (std.banks - 1).bit_length()), n_win=win.shape[1], n_piece=mp.shape[1],
        o_win=115,
        o_mp=115 + win.size, tab=tab,
    )
    return DramSystem(mem, cs, n_ch, m, tables)


def new_state(system: DramSystem, req_capacity: int, trace_capacity: int = 0):
    """Fresh controller state for request ids below ``req_capacity`` and a command trace of up
    to ``trace_capacity`` commands (0: no trace). Layout: ``_engine.py`` module docstring.

    Refresh is staggered: channel c is first due at nREFI - c * nREFI // channels."""
    from tilesim.arch._engine import DramState

    T = system.tables
    n_ch, NB, NBG = T.n_ch, T.n_banks, T.n_bg
    n_ent = n_ch * (T.rq_cap + T.wq_cap)
    W = int(T.tab[T.o_win + 2 * T.n_win: T.o_win + 3 * T.n_win].max()) if T.n_win else 1
    req_capacity = max(1, int(req_capacity))
    trace_capacity = max(0, int(trace_capacity))
    hot_w = -(-(4 * NB + 4 * NBG) // 8) * 8        # a channel's hot block, whole cache lines
    sizes = [("o_ent", 8 * n_ent), ("o_free", n_ent), ("o_bl", 8 * n_ch * 2 * NB),
             ("o_bk", 8 * n_ch * NB), ("o_bg", 8 * n_ch * NBG), ("o_hot", hot_w * n_ch),
             ("o_chn", 24 * n_ch),
             ("o_win", max(T.n_win, 1) * n_ch * (W + 1)), ("o_cnt", 16 * n_ch), ("o_glob", 4),
             ("o_comp", req_capacity), ("o_enq", req_capacity), ("o_done", req_capacity),
             ("o_trace", 7 * trace_capacity)]
    off, at = {}, 0
    for name, size in sizes:
        off[name] = at
        at += -(-size // 8) * 8                  # every region starts on a 64-byte line
    # Align the buffer itself to 64 bytes, so an 8-word record (an entry, a bank) is one
    # cache line; numpy's large allocations are not (measured: up to 25 % slower runs).
    raw = np.zeros(at + 8, dtype=np.int64)
    skip = (-raw.ctypes.data % 64) // 8
    buf = raw[skip:skip + at]
    S = DramState(buf=buf, n_ent=n_ent, win_w=W, req_cap=req_capacity,
                  trace_cap=trace_capacity, hot_w=hot_w, **off)
    v = views(system, S)
    v["entries"][:, 6] = -1
    v["free"][:] = np.arange(n_ent)               # each (channel, type) region its own stack
    v["bank_lists"][:, [0, 1, 3, 4]] = -1
    v["banks"][:, 5] = -1
    hot = buf[S.o_hot:S.o_hot + hot_w * n_ch].reshape(n_ch, hot_w)
    hot[:, 4 * NB:4 * NB + 4 * NBG].reshape(n_ch, -1, 2)[:] = (2**62, -1)   # groups: no hit
    ref_first = T.nREFI - (np.arange(n_ch, dtype=np.int64) * T.nREFI) // n_ch
    chn = v["channels"]
    chn[:, 7] = ref_first                         # refresh due
    chn[:, 10] = ref_first                        # next cycle of interest
    chn[:, 11] = 1                                # idle
    chn[:, 15] = T.rq_cap                         # free read slots
    chn[:, 16] = T.wq_cap                         # free write slots
    v["windows"][:] = -(2**40)
    v["windows"][..., W] = 0
    v["comp_cycle"][:] = -1
    v["enq_cycle"][:] = -1
    return S


def views(system: DramSystem, S) -> dict[str, np.ndarray]:
    """Named numpy views into the state buffer (for Python: results, tests, inspection)."""
    T = system.tables
    n_ch = T.n_ch
    b = S.buf
    W1 = S.win_w + 1

    def at(o, n):
        return b[o:o + n]

    return {
        "entries": at(S.o_ent, 8 * S.n_ent).reshape(S.n_ent, 8),
        "free": at(S.o_free, S.n_ent),
        "bank_lists": at(S.o_bl, 8 * n_ch * 2 * T.n_banks).reshape(-1, 8),
        "banks": at(S.o_bk, 8 * n_ch * T.n_banks).reshape(-1, 8),
        "bankgroups": at(S.o_bg, 8 * n_ch * T.n_bg).reshape(-1, 8),
        "channels": at(S.o_chn, 24 * n_ch).reshape(n_ch, 24),
        "windows": at(S.o_win, max(T.n_win, 1) * n_ch * W1).reshape(-1, n_ch, W1),
        "counters": at(S.o_cnt, 16 * n_ch).reshape(n_ch, 16),
        "glob": at(S.o_glob, 4),
        "comp_cycle": at(S.o_comp, S.req_cap),
        "enq_cycle": at(S.o_enq, S.req_cap),
        "done": at(S.o_done, S.req_cap),
        "trace": at(S.o_trace, 7 * S.trace_cap).reshape(S.trace_cap, 7),
    }


# ------------------------------------------------------------------------------------------
# Running a trace
# ------------------------------------------------------------------------------------------


@dataclass
class DramResult:
    """What one run of the standalone driver produced."""

    system: DramSystem
    addr: np.ndarray
    nbytes: np.ndarray
    is_write: np.ndarray
    arrival: np.ndarray
    comp_cycle: np.ndarray          # per request: data returned (read) / written (write)
    enq_cycle: np.ndarray           # per request: accepted into its channel's queue
    counters: np.ndarray            # int64[channel, DRAM_COUNTERS]
    end_cycle: int                  # last completion
    events: int                     # channel events the driver processed
    wall_s: float                   # wall time of the numba run
    trace: dict | None = None       # command trace, arrays by field, when asked for
    trace_dropped: int = 0
    done_order: np.ndarray | None = None   # request ids in the order the done FIFO got them
    _energy: dict | None = field(default=None, repr=False)

    def counter(self, name: str) -> int:
        from tilesim.arch._engine import DRAM_COUNTERS
        return int(self.counters[:, DRAM_COUNTERS.index(name)].sum())

    @property
    def bytes_requested(self) -> int:
        return int(self.nbytes.sum())

    @property
    def duration_ns(self) -> float:
        start = int(self.arrival.min()) if len(self.arrival) else 0
        return max(1, self.end_cycle - start) * self.system.tck_ns

    @property
    def bandwidth_gbps(self) -> float:
        """Requested bytes over first arrival .. last completion, GB/s."""
        return self.bytes_requested / self.duration_ns

    @property
    def row_hit_rate(self) -> float:
        cols = self.counter("RD") + self.counter("WR")
        return self.counter("row_hits") / cols if cols else 0.0

    def read_latency_cycles(self) -> np.ndarray:
        """Per read: completion minus acceptance into the controller queue (DRAMsim3 measures
        the same span, AddTransaction to read callback)."""
        r = ~self.is_write.astype(bool)
        return (self.comp_cycle[r] - self.enq_cycle[r]).astype(np.int64)

    def energy(self) -> dict:
        from tilesim.arch.dram.energy import energy_report
        if self._energy is None:
            self._energy = energy_report(self.system, self.counters, self.end_cycle,
                                         self.bytes_requested)
        return self._energy

    def bandwidth_over_time(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(bin centres in ns, GB/s completed in each bin)."""
        end = max(1, self.end_cycle)
        edges = np.linspace(0, end, bins + 1)
        got, _ = np.histogram(self.comp_cycle, bins=edges, weights=self.nbytes)
        width_ns = (edges[1] - edges[0]) * self.system.tck_ns
        return (edges[:-1] + edges[1:]) / 2 * self.system.tck_ns, got / width_ns

    def summary(self) -> dict:
        """The headline numbers as plain data (``tilesim dram --json``)."""
        lat = self.read_latency_cycles()
        tck = self.system.tck_ns
        e = self.energy()
        pct = lambda q: float(np.percentile(lat, q)) if len(lat) else 0.0  # noqa: E731
        return {
            "standard": self.system.std.name,
            "devices": self.system.mem.devices,
            "channels": self.system.n_channels,
            "data_rate_gbps": self.system.compiled.rate_gbps,
            "tck_ns": round(tck, 6),
            "requests": int(len(self.addr)),
            "reads": int((~self.is_write.astype(bool)).sum()),
            "writes": int(self.is_write.astype(bool).sum()),
            "bytes": self.bytes_requested,
            "cycles": int(self.end_cycle),
            "time_ns": round(self.duration_ns, 3),
            "bandwidth_gbps": round(self.bandwidth_gbps, 3),
            "peak_gbps": round(self.system.peak_gbps, 3),
            "percent_of_peak": round(100 * self.bandwidth_gbps / self.system.peak_gbps, 2),
            "row_hit_rate": round(self.row_hit_rate, 4),
            "read_latency_cycles_mean": round(float(lat.mean()), 2) if len(lat) else 0.0,
            "read_latency_cycles_p50": pct(50),
            "read_latency_cycles_p99": pct(99),
            "read_latency_ns_mean": round(float(lat.mean()) * tck, 3) if len(lat) else 0.0,
            "read_latency_ns_p50": round(pct(50) * tck, 3),
            "read_latency_ns_p99": round(pct(99) * tck, 3),
            "energy_pj": round(e["total_pj"], 1),
            "energy_pj_per_bit": round(e["pj_per_bit"], 4),
            "energy_breakdown_pj": {k: round(v, 1) for k, v in e["breakdown_pj"].items()},
            "commands": {k: self.counter(k) for k in ("ACT", "PRE", "RD", "WR", "REF")},
            "sim_events": int(self.events),
            "sim_wall_s": round(self.wall_s, 4),
            "sim_requests_per_s": round(len(self.addr) / self.wall_s) if self.wall_s else None,
        }


def check_requests(system: DramSystem, addr, nbytes, is_write, arrival):
    """Validate a request trace; returns int64 arrays or raises InputError (one line)."""
    addr = np.asarray(addr, dtype=np.int64).ravel()
    n = addr.shape[0]

    def per_request(name, value, dtype):
        v = np.asarray(value, dtype=dtype)
        if v.ndim and v.size != n:
            raise InputError(f"{name} has {v.size} entries for {n} requests (one each, or "
                             f"one value for all)")
        return np.broadcast_to(v.ravel() if v.ndim else v, (n,)).copy()

    nbytes = per_request("nbytes", nbytes, np.int64)
    is_write = per_request("is_write", is_write, bool).astype(np.int64)
    arrival = (np.zeros(n, dtype=np.int64) if arrival is None
               else per_request("arrival", arrival, np.int64))
    chunk = system.chunk_bytes

    def first(mask):
        return int(np.flatnonzero(mask)[0])

    if n and (addr < 0).any():
        i = first(addr < 0)
        raise InputError(f"request {i}: address {addr[i]} is negative")
    if n and (nbytes < 1).any():
        i = first(nbytes < 1)
        raise InputError(f"request {i}: {nbytes[i]} bytes (at least 1)")
    if n and (arrival < 0).any():
        i = first(arrival < 0)
        raise InputError(f"request {i}: arrival cycle {arrival[i]} is negative")
    bad = (addr % chunk) + nbytes > chunk
    if n and bad.any():
        i = first(bad)
        raise InputError(f"request {i}: {nbytes[i]} B at address {addr[i]} crosses a "
                         f"{chunk} B mapping chunk of {system.std.name} (split it there)")
    return addr, nbytes, is_write, arrival


def simulate(system: DramSystem, addr, nbytes, is_write=False, arrival=None, *,
             trace_capacity: int = 0) -> DramResult:
    """Run requests through the standalone driver (``_engine.dram_run``).

    ``addr`` byte addresses, ``nbytes`` bytes each (scalar or array), ``is_write`` bool(s),
    ``arrival`` DRAM cycles (default 0: all at once, closed loop with back-pressure).
    ``trace_capacity`` > 0 records up to that many issued commands."""
    from tilesim.arch._engine import dram_map_many, dram_run

    addr, nbytes, is_write, arrival = check_requests(system, addr, nbytes, is_write, arrival)
    T = system.tables
    n = addr.shape[0]
    chan = dram_map_many(T, addr)
    # Requests are handed to the driver grouped by channel (stable, so each channel keeps
    # trace order): the driver then reads every array front to back, and request ids are
    # positions in this order (mapped back below).
    perm = np.argsort(chan, kind="stable").astype(np.int64)
    counts = np.bincount(chan, minlength=T.n_ch).astype(np.int64)
    ch_end = np.cumsum(counts).astype(np.int64)
    ch_start = (ch_end - counts).astype(np.int64)
    S = new_state(system, n, trace_capacity)
    a_s, b_s, w_s, r_s = addr[perm], nbytes[perm], is_write[perm], arrival[perm]
    t0 = time.perf_counter()
    events = dram_run(T, S, a_s, b_s, w_s, r_s, ch_start, ch_end)
    wall = time.perf_counter() - t0
    v = views(system, S)
    comp = np.empty(n, dtype=np.int64)
    comp[perm] = v["comp_cycle"][:n]
    enq = np.empty(n, dtype=np.int64)
    enq[perm] = v["enq_cycle"][:n]
    end = int(comp.max()) if n else 0
    trace, dropped = None, 0
    if trace_capacity:
        issued = int(v["glob"][2])
        k = min(issued, trace_capacity)
        dropped = issued - k
        trace = {name: v["trace"][:k, j].copy() for j, name in enumerate(TRACE_FIELDS)}
    pushed = int(v["glob"][1])
    done_order = perm[v["done"][:min(pushed, n)]] if n else np.zeros(0, dtype=np.int64)
    return DramResult(system, addr, nbytes, is_write, arrival, comp, enq,
                      v["counters"].copy(), end, int(events), wall, trace, dropped,
                      done_order)


# ------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------


def unloaded_read_cycles(timings, row_state: str = "closed") -> int:
    """Read latency with nothing else queued: 'hit', 'closed' or 'conflict' (module doc)."""
    t = timings
    base = t["nCL"] + t["nBL"]
    return {"hit": base, "closed": t["nRCD"] + base,
            "conflict": t["nRP"] + t["nRCD"] + base}[row_state]


def act_rate_bound_gbps(system: DramSystem, bytes_per_act: int) -> float:
    """Upper bound for traffic that opens one row per ``bytes_per_act`` (module doc)."""
    t = system.timings
    bursts = max(1, -(-bytes_per_act // system.std.granule_bytes))
    interval = max(t["nRRD_S"], t["nFAW"] / 4, t["nRC"] / system.std.banks,
                   bursts * max(t["nBL"], t["nCCD_S"]))
    refresh = 1 - t["nRFC"] / t["nREFI"]
    return system.n_channels * bytes_per_act / (interval * system.tck_ns) * refresh
