"""tilesim's numba engine: every jitted function of the simulator lives in this one module.

Why one module: numba's on-disk cache (``cache=True``) does not notice edits to a jitted
function imported from another file (numba#1833, in the numba docs' caching limitations), so a
caller would keep running stale code. Rules here (STYLE 3.4): ``@njit(cache=True)`` only, no
module-level globals read inside jitted code (numbers that look like constants are literals
with a comment), no jitclass, state in numpy arrays held in namedtuples with the integer
offsets and sizes that describe them, parameters passed as arguments. Python builds the
tables (``tilesim/arch/dram/model.py``); this module only runs them. One section per
component; the chip event loop will join them.

=================================================================================================
DRAM
=================================================================================================

Per channel, one controller: a read queue and a write queue, FR-FCFS scheduling (a ready column
command to an open row first, oldest first; else the oldest ready ACT or PRE), open-page policy
(closed-page as an option), write draining between watermarks, all-bank refresh every nREFI,
and the standard's timing constraints compiled into ``lat[level, before, after]`` plus window
rows (tFAW). Event-driven: a channel computes the next DRAM cycle at which it can act and time
skips there; nothing ticks. Time is in cycles of the DRAM command clock CK (int64).

Commands (index): ACT 0, PRE 1, RD 2, WR 3, REF 4.
Levels (index): channel 0, bank group 1, bank 2.

Kernel API (what the chip loop calls; all jitted, all take the tables ``T`` and the state ``S``
built once by ``tilesim.arch.dram.model.build(mem).tables`` and ``model.new_state(system,
req_capacity, trace_capacity)``). Cycles are DRAM command-clock cycles (int64); addresses and
sizes are bytes.

``dram_map(T, addr) -> (channel, bankgroup, bank_in_group, row, column)``
    Byte address to DRAM coordinates (column in access granules). ``dram_channel(T, addr)``
    gives the channel only.

``dram_enqueue(T, S, req, addr, nbytes, is_write, now) -> bool``
    Offer request ``req`` (an id below ``S.req_cap``: not checked, numba does no bounds
    checks, so a larger id overwrites other state) at cycle ``now``. False when that
    channel's read (or write) queue is full: retry at or after the cycle a later
    ``dram_service`` of that channel returns. A request covers ``ceil((addr % granule +
    nbytes) / granule)`` consecutive granules, which must lie in one ``T.chunk_bytes``-aligned
    chunk (the mapping keeps a chunk in one channel, bank and row; not checked here, a longer
    request wraps to the start of its row: ``model.check_requests`` checks it in Python); it
    is served as that many column commands through the same scheduler. After a successful
    enqueue the channel needs attention at ``now``: call ``dram_service(T, S, ch, now)``.

``dram_service(T, S, ch, now) -> next_cycle``
    Do everything channel ``ch`` can legally do at cycle ``now`` (refresh, issue commands,
    retire requests) and return the next cycle it needs attention, or ``DRAM_NEVER`` (2**62)
    when nothing is queued. Call it at the cycle it returned (later is legal, only slower)
    and after every successful enqueue; ``now`` must not go backwards. The returned cycle may
    be early (a call then does nothing and returns the exact one), never late. An idle
    channel's refreshes are done lazily, at the exact cycles they were due, the next time it
    is touched (enqueue, service or finish), so refresh timing stays exact when traffic
    resumes.

``dram_completion(S, req)``, ``dram_pop_done(S) -> req or -1``
    A request's completion cycle (-1 until known) is set, and its id pushed on the done FIFO,
    when its last burst issues: reads complete at that burst's issue + nCL + nBL (data
    returned), writes at issue + nCWL + nBL (data written). The completion cycle may lie up
    to nCL + nBL cycles after the service call that produced it: treat it as the event time.
    ``dram_enqueue_cycle(S, req)`` is the cycle it was accepted. Its queue slot is free at once.

``dram_counter(S, ch, k)`` (int64), k in ``DRAM_COUNTERS`` order:
    ACT, PRE, RD, WR, REF, row_hits, row_misses, row_conflicts (column commands: to a row
    already accessed / the first after an ACT into a closed bank / the first after an ACT that
    followed a conflict PRE), bytes_read, bytes_written (requested bytes, at completion),
    busy_cycles (data bus: (RD + WR) x nBL, filled in by ``dram_finish``), active_cycles
    (>= 1 bank open), reads_done, writes_done, pre_refresh, pre_closed_page.

``dram_finish(T, S, end)``
    Bring every idle channel's refresh up to ``end``, close the active-cycle counts there and
    fill in busy_cycles (for energy and reports). Call when a run ends.

``dram_run(T, S, addr, nbytes, is_write, arrival, ch_start, ch_end) -> service_calls``
    The standalone driver (``tilesim dram``, tests, benchmarks). Request i (its id) is
    ``addr[i], nbytes[i], is_write[i]``, arriving at cycle ``arrival[i]``; the arrays are
    grouped by channel, channel c's requests at ``[ch_start[c], ch_end[c])`` in trace order
    (``model.simulate`` sorts a trace this way and maps ids back). Each channel takes its
    requests in that order once they have arrived; when its queue is full, they wait
    (back-pressure): a waiting request enters in the cycle a slot frees (right after the
    service call that freed it) and is first considered the cycle after. This rule does not
    depend on how often a channel is woken, so the results do not either (a test runs the
    exact and the lower-bound wake-ups and compares every command). Requests for other
    channels are not held up: one in-order injector per channel, not DRAMsim3's single
    global head, which lets one full channel stall all the others (the ``q32`` trap in
    dram_standards.md). Channels then never interact, so the driver runs them one after
    another.

The issued command trace is recorded as rows (cycle, channel, bank group, bank in group, row,
column, command) while fewer than ``S.trace_cap`` commands have been issued (0 = off); the
count goes on (``dram_commands_issued``), so a trace that overflowed is detectable.

Speed: about 10 M bursts per wall-second (5.4 M 64-byte requests on the 32-byte-burst
standards, 9.5 M on 64-byte ones) on one core of the 2-core EPYC this was written on;
benchmarks/bench_dram.py measures it. What made it so, in order of effect (each measured):

- No reference counting. numba increfs and decrefs, with atomic operations, every array it
  takes out of a tuple or passes to a call, and prunes the pairs only in straight-line code;
  here that was a third of the run time, and it made run times swing with the load on the
  other core. These kernels allocate nothing, so they are compiled with ``_nrt=False``
  (numba's switch for the runtime's reference counting; an underscore option, so a test
  checks every DRAM kernel still has it) and hold their state in one array (``S.buf``) and their
  tables in another (``T.tab``), with integer offsets in the namedtuples.
- ``dram_service``, ``_dram_step``, ``dram_enqueue`` and ``dram_map`` are inlined into their
  callers at the numba-IR level (``inline="always"``): 1.6x, for ~5 s more compile on a
  cold cache (~19 s in all). A chip loop that calls them inlines them too; compile it with
  ``_nrt=False`` as well, or the inlined code gets reference counting back.
- The FR-FCFS scan and the column command are written out in ``_dram_step``; after issuing,
  the next cycle is a lower bound, not a second scan (``_dram_step`` docstring); each bank
  list caches its oldest row hit; an issue touches only the constrained command pairs; the
  standalone driver runs one channel at a time.

Layout. Within ``S.buf`` (each record's fields at ``base + k``):

    entry e      o_ent + 8*e:   0 req, 1 bank, 2 row, 3 next column, 4 bursts left, 5 age,
                                6 next entry in its bank list (-1), 7 bytes.
                 Slots [ch*QT, ch*QT+RQ) are reads, then WQ writes (QT = RQ + WQ);
                 o_free + slot: the free-slot stacks, one region per (channel, type).
    bank list    o_bl + 8*li, li = (ch*2 + type)*NB + bank (type 0 read, 1 write):
                                0 head, 1 tail, 2 queued entries hitting the open row,
                                3 the oldest of them (-1), 4 its predecessor in the list (-1),
                                5 its age. Only a bank's oldest hit ever retires (FR-FCFS) and
                                an ACT recounts, so 3-5 stay exact without walking the list.
    bank         o_bk + 8*(ch*NB + bank): 0-4 earliest cycle per command, 5 open row (-1),
                                6 kind of the next column access (0 hit, 1 miss, 2 conflict),
                                7 the last PRE closed a row for a conflict.
    bank group   o_bg + 8*(ch*NBG + g): 0-4 earliest cycle per command, 5/6 the latest
                                bank-level RD / WR earliest cycle over its banks (the scan
                                takes a group whole when no bank is later than the group).
    hot block    o_hot + hot_w*ch: what the column scan reads, packed (a few cache lines a
                                channel, not one per bank): + j*NB + bank (j 0 RD, 1 WR): copies
                                of bank fields 2 and 3; + (2 + type)*NB + bank: copies of bank
                                list field 5 (age of its oldest hit); + 4*NB + 2*(type*NBG + g):
                                the group's oldest row hit of that type (age, 2**62 if none)
                                and its bank (-1).
    channel      o_chn + 24*ch: 0-4 earliest cycle per command, 5 mode (0 reads, 1 write
                                drain), 6 refresh pending, 7 refresh due, 8 a bank open since,
                                9 age counter, 10 next cycle of interest, 11 idle, 12 open-bank
                                mask, 13/14 queued reads/writes, 15/16 free-stack tops, 17/18
                                banks with queued reads/writes, 19/20 banks with row-hitting
                                reads/writes.
    window       o_win + (w*n_ch + ch)*(W+1): the last W counted command cycles, then the
                                ring position.
    counters     o_cnt + 16*ch + k (DRAM_COUNTERS).
    globals      o_glob: 0 done-FIFO head, 1 tail (counts), 2 commands issued, 3 tail index.
    requests     o_comp + req: completion cycle; o_enq + req: accepted at; o_done: the FIFO.
    trace        o_trace + 7*k: one command.
``T.tab``: lat[level, before, after] at (level*5 + before)*5 + after (-2**40: none); at 75 +
level*5 + before, the bitmask of ``after`` commands with a constraint (so an issue touches only
those); at 90 + before*5 + after, the largest distance over the levels; then the window rows
at o_win + r*n_win + w (r: 0 before mask, 1 after mask, 2 count, 3 cycles), then the mapping
pieces at o_mp + r*n_piece + k (r: 0 field (0 ch 1 bg 2 ba 3 row 4 col), 1 radix,
2 log2(radix) or -1, 3 weight; least significant piece first).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

# =================================================================================================
# DRAM
# =================================================================================================

DRAM_NEVER = 1 << 62
"""``dram_service`` result for a channel with nothing to do (the same literal is used inside)."""

DRAM_COMMANDS = ("ACT", "PRE", "RD", "WR", "REF")

DRAM_COUNTERS = ("ACT", "PRE", "RD", "WR", "REF", "row_hits", "row_misses", "row_conflicts",
                 "bytes_read", "bytes_written", "busy_cycles", "active_cycles", "reads_done",
                 "writes_done", "pre_refresh", "pre_closed_page")

DramTables = namedtuple("DramTables", [
    "n_ch",          # channels in the system
    "n_bg",          # bank groups per channel
    "n_bpg",         # banks per bank group (a power of two)
    "bpg_shift",     # log2(n_bpg)
    "n_banks",       # banks per channel (<= 63)
    "gran_bytes",    # bytes per column command (a power of two)
    "gran_shift",    # log2(gran_bytes)
    "columns",       # granules per row
    "chunk_bytes",   # aligned bytes the mapping keeps in one channel, bank and row
    "rq_cap",        # read-queue entries per channel
    "wq_cap",        # write-queue entries per channel
    "wq_hi",         # start draining writes at this many queued writes
    "wq_lo",         # stop draining (if reads wait) at this many
    "closed_page",   # 1: precharge a bank once no queued request hits its row
    "nBL",           # data-bus cycles per burst
    "rd_lat",        # nCL + nBL: read issue to data returned
    "wr_lat",        # nCWL + nBL: write issue to data written
    "nREFI",         # refresh interval, cycles
    "exact_next",    # 1: find the next cycle by a second scan, not the lower bound (tests)
    "ch_hash",       # 1: channel += address above the channel piece, mod n_ch (mapping.py)
    "bank_hash",     # 1: bank group and bank += XOR-fold of the address above them (mapping.py)
    "bank_bits",     # bits of that fold: ceil(log2(n_banks))
    "n_win",         # window constraint rows (tFAW)
    "n_piece",       # address-mapping pieces
    "o_win",         # offset of the window rows in tab
    "o_mp",          # offset of the mapping pieces in tab
    "tab",           # int64[]: constraint and mapping tables (module doc)
])

DramState = namedtuple("DramState", [
    "buf",           # int64[]: all mutable state (module doc)
    "n_ent", "win_w", "o_ent", "o_free", "o_bl", "o_bk", "o_bg", "o_chn", "o_win", "o_cnt",
    "o_glob", "o_comp", "o_enq", "o_done", "req_cap", "o_trace", "trace_cap", "o_hot",
    "hot_w",
])


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def dram_map(T, addr):
    """Byte address -> (channel, bank group, bank in group, row, column granule)."""
    tab = T.tab
    o = T.o_mp
    n = T.n_piece
    a = addr >> T.gran_shift
    ch = 0
    bg = 0
    ba = 0
    row = 0
    col = 0
    above = 0
    above_bk = 0
    for k in range(n):
        r = tab[o + n + k]
        s = tab[o + 2 * n + k]
        if s >= 0:
            d = a & (r - 1)
            a = a >> s
        else:
            d = a % r
            a = a // r
        v = d * tab[o + 3 * n + k]
        f = tab[o + k]
        if f == 0:
            ch += v
            above = a
        elif f == 1:
            bg += v
            above_bk = a
        elif f == 2:
            ba += v
            above_bk = a
        elif f == 3:
            row += v
        else:
            col += v
    if T.ch_hash:
        ch = (ch + above) % T.n_ch
    if T.bank_hash:
        x = 0
        m = (1 << T.bank_bits) - 1
        while above_bk != 0:
            x ^= above_bk & m
            above_bk >>= T.bank_bits
        bg = (bg + x % T.n_bg) % T.n_bg
        ba = (ba + x // T.n_bg) % T.n_bpg
    return ch, bg, ba, row, col


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_channel(T, addr):
    """The channel a byte address maps to."""
    return dram_map(T, addr)[0]


@njit(cache=True, error_model="numpy")
def dram_map_many(T, addr):
    """Channel of every address in an int64 array."""
    out = np.empty(addr.shape[0], dtype=np.int64)
    for i in range(addr.shape[0]):
        out[i] = dram_map(T, addr[i])[0]
    return out


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_completion(S, req):
    """Completion cycle of request ``req`` (-1 while unknown)."""
    return S.buf[S.o_comp + req]


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_enqueue_cycle(S, req):
    """Cycle at which request ``req`` was accepted (-1 if never)."""
    return S.buf[S.o_enq + req]


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_counter(S, ch, k):
    """Counter ``k`` (DRAM_COUNTERS order) of channel ``ch``."""
    return S.buf[S.o_cnt + 16 * ch + k]


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_commands_issued(S):
    """Commands issued so far (the trace holds the first ``S.trace_cap``)."""
    return S.buf[S.o_glob + 2]


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_win_ready(T, S, ch, cmd):
    """Earliest cycle for ``cmd`` under the window rows (tFAW): the oldest of the last ``count``
    counted commands plus the window."""
    tab = T.tab
    buf = S.buf
    nw = T.n_win
    W1 = S.win_w + 1
    r = -(1 << 40)
    for w in range(nw):
        if (tab[T.o_win + nw + w] >> cmd) & 1:
            base = S.o_win + (w * T.n_ch + ch) * W1
            v = buf[base + buf[base + W1 - 1]] + tab[T.o_win + 3 * nw + w]
            if v > r:
                r = v
    return r


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_ready(T, S, ch, b, cmd):
    """Earliest legal cycle for ``cmd`` to bank ``b`` (flat, in channel ``ch``)."""
    buf = S.buf
    r = buf[S.o_chn + 24 * ch + cmd]
    v = buf[S.o_bg + 8 * (ch * T.n_bg + (b >> T.bpg_shift)) + cmd]
    if v > r:
        r = v
    v = buf[S.o_bk + 8 * (ch * T.n_banks + b) + cmd]
    if v > r:
        r = v
    v = _dram_win_ready(T, S, ch, cmd)
    if v > r:
        r = v
    return r


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_ref_ready(T, S, ch):
    """Earliest legal cycle for an all-bank REF: every level instance in the channel counts."""
    buf = S.buf
    r = max(buf[S.o_chn + 24 * ch + 4], _dram_win_ready(T, S, ch, 4))
    for k in range(ch * T.n_bg, (ch + 1) * T.n_bg):
        if buf[S.o_bg + 8 * k + 4] > r:
            r = buf[S.o_bg + 8 * k + 4]
    for k in range(ch * T.n_banks, (ch + 1) * T.n_banks):
        if buf[S.o_bk + 8 * k + 4] > r:
            r = buf[S.o_bk + 8 * k + 4]
    return r


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_issue(T, S, ch, b, cmd, t, row, col):
    """Record command ``cmd`` at cycle ``t`` (bank ``b`` flat, -1 for REF): raise the earliest
    cycle of every command at each level, the window history, counters and the trace."""
    buf = S.buf
    tab = T.tab
    c0 = S.o_chn + 24 * ch
    for f in range(5):
        v = t + tab[cmd * 5 + f]                        # level 0: channel
        if v > buf[c0 + f]:
            buf[c0 + f] = v
    g = -1
    if b >= 0:
        g = b >> T.bpg_shift
        g0 = S.o_bg + 8 * (ch * T.n_bg + g)
        k0 = S.o_bk + 8 * (ch * T.n_banks + b)
        m = tab[80 + cmd]                               # level 1: bank group
        while m != 0:
            f = trailing_zeros(m)
            m &= m - 1
            v = t + tab[25 + cmd * 5 + f]
            if v > buf[g0 + f]:
                buf[g0 + f] = v
        m = tab[85 + cmd]                               # level 2: bank
        while m != 0:
            f = trailing_zeros(m)
            m &= m - 1
            v = t + tab[50 + cmd * 5 + f]
            if v > buf[k0 + f]:
                buf[k0 + f] = v
                if f >= 2 and f <= 3:
                    buf[S.o_hot + S.hot_w * ch + (f - 2) * T.n_banks + b] = v
                    if v > buf[g0 + 3 + f]:
                        buf[g0 + 3 + f] = v             # the group's latest bank RD / WR
    else:
        # a channel-wide command (REF) constrains every bank group and bank of the channel
        for g1 in range(ch * T.n_bg, (ch + 1) * T.n_bg):
            for f in range(5):
                v = t + tab[25 + cmd * 5 + f]
                if v > buf[S.o_bg + 8 * g1 + f]:
                    buf[S.o_bg + 8 * g1 + f] = v
        for k in range(ch * T.n_banks, (ch + 1) * T.n_banks):
            for f in range(5):
                v = t + tab[50 + cmd * 5 + f]
                if v > buf[S.o_bk + 8 * k + f]:
                    buf[S.o_bk + 8 * k + f] = v
            g1 = S.o_bg + 8 * (k >> T.bpg_shift)
            for f in range(2, 4):
                buf[S.o_hot + S.hot_w * ch + (f - 2) * T.n_banks + k - ch * T.n_banks] = \
                    buf[S.o_bk + 8 * k + f]
                if buf[S.o_bk + 8 * k + f] > buf[g1 + 3 + f]:
                    buf[g1 + 3 + f] = buf[S.o_bk + 8 * k + f]
    nw = T.n_win
    W1 = S.win_w + 1
    for w in range(nw):
        if (tab[T.o_win + w] >> cmd) & 1:
            base = S.o_win + (w * T.n_ch + ch) * W1
            p = buf[base + W1 - 1]
            buf[base + p] = t
            p += 1
            if p == tab[T.o_win + 2 * nw + w]:
                p = 0
            buf[base + W1 - 1] = p
    buf[S.o_cnt + 16 * ch + cmd] += 1
    n = buf[S.o_glob + 2]
    if n < S.trace_cap:
        o = S.o_trace + 7 * n
        buf[o] = t
        buf[o + 1] = ch
        buf[o + 2] = g
        buf[o + 3] = b - (g << T.bpg_shift) if b >= 0 else -1
        buf[o + 4] = row
        buf[o + 5] = col
        buf[o + 6] = cmd
    buf[S.o_glob + 2] = n + 1


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_group_oldest(T, S, ch, typ, g):
    """Cache the oldest row hit of type ``typ`` over the banks of bank group ``g``: its age and
    its bank (-1: no hit), from the banks' own oldest hits. Called wherever a bank's hit bit
    or oldest hit changes, so the scan in ``_dram_step`` can take a whole group at once."""
    buf = S.buf
    c0 = S.o_chn + 24 * ch
    h0 = S.o_hot + S.hot_w * ch
    ages = h0 + (2 + typ) * T.n_banks
    hits = buf[c0 + 19 + typ]
    best = 1 << 62
    bb = -1
    for b in range(g << T.bpg_shift, (g + 1) << T.bpg_shift):
        if (hits >> b) & 1:
            s = buf[ages + b]
            if s < best:
                best = s
                bb = b
    o = h0 + 4 * T.n_banks + 2 * (typ * T.n_bg + g)
    buf[o] = best
    buf[o + 1] = bb


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_count_hits(T, S, ch, typ, b, row):
    """Queued entries of ``typ`` in bank ``b`` whose row is ``row``; sets the hit bit."""
    buf = S.buf
    lo = S.o_bl + 8 * ((ch * 2 + typ) * T.n_banks + b)
    n = 0
    first = -1
    first_prev = -1
    prev = -1
    e = buf[lo]
    while e >= 0:
        if buf[S.o_ent + 8 * e + 2] == row:
            if n == 0:
                first = e
                first_prev = prev
            n += 1
        prev = e
        e = buf[S.o_ent + 8 * e + 6]
    buf[lo + 2] = n
    buf[lo + 3] = first
    buf[lo + 4] = first_prev
    if first >= 0:
        buf[lo + 5] = buf[S.o_ent + 8 * first + 5]
        buf[S.o_hot + S.hot_w * ch + (2 + typ) * T.n_banks + b] = buf[lo + 5]
    c0 = S.o_chn + 24 * ch
    if n > 0:
        buf[c0 + 19 + typ] |= 1 << b
    else:
        buf[c0 + 19 + typ] &= ~(1 << b)
    _dram_group_oldest(T, S, ch, typ, b >> T.bpg_shift)


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_activate(T, S, ch, b, row, t):
    buf = S.buf
    _dram_issue(T, S, ch, b, 0, t, row, -1)
    k0 = S.o_bk + 8 * (ch * T.n_banks + b)
    buf[k0 + 5] = row
    buf[k0 + 6] = 1 + buf[k0 + 7]                       # next access: 1 miss, 2 conflict
    buf[k0 + 7] = 0
    _dram_count_hits(T, S, ch, 0, b, row)
    _dram_count_hits(T, S, ch, 1, b, row)
    c0 = S.o_chn + 24 * ch
    if buf[c0 + 12] == 0:
        buf[c0 + 8] = t
    buf[c0 + 12] |= 1 << b


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_precharge(T, S, ch, b, t, kind):
    """kind 0: row conflict, 1: refresh, 2: closed-page policy."""
    buf = S.buf
    k0 = S.o_bk + 8 * (ch * T.n_banks + b)
    _dram_issue(T, S, ch, b, 1, t, buf[k0 + 5], -1)
    buf[k0 + 5] = -1
    buf[k0 + 7] = 1 if kind == 0 else 0
    c0 = S.o_chn + 24 * ch
    for typ in range(2):
        buf[S.o_bl + 8 * ((ch * 2 + typ) * T.n_banks + b) + 2] = 0
        buf[S.o_bl + 8 * ((ch * 2 + typ) * T.n_banks + b) + 3] = -1
        if (buf[c0 + 19 + typ] >> b) & 1:
            buf[c0 + 19 + typ] &= ~(1 << b)
            _dram_group_oldest(T, S, ch, typ, b >> T.bpg_shift)
    buf[c0 + 12] &= ~(1 << b)
    n0 = S.o_cnt + 16 * ch
    if buf[c0 + 12] == 0:
        buf[n0 + 11] += t - buf[c0 + 8]                 # active_cycles
    if kind == 1:
        buf[n0 + 14] += 1                               # pre_refresh
    elif kind == 2:
        buf[n0 + 15] += 1                               # pre_closed_page


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_refresh_step(T, S, ch, t):
    """Refresh is due: precharge open banks (one per cycle, earliest-ready first), then REF.
    Returns the next cycle, or -1 after issuing REF (normal scheduling continues at ``t``)."""
    never = 1 << 62
    buf = S.buf
    c0 = S.o_chn + 24 * ch
    if buf[c0 + 12] != 0:
        best_b = -1
        best_r = never
        b = 0
        m = buf[c0 + 12]
        while m != 0:
            if m & 1:
                r = _dram_ready(T, S, ch, b, 1)
                if r < best_r:
                    best_r = r
                    best_b = b
            m >>= 1
            b += 1
        if best_r > t:
            return best_r
        _dram_precharge(T, S, ch, best_b, t, 1)
        if buf[c0 + 12] == 0:
            return max(_dram_ref_ready(T, S, ch), t + 1)
        best_r = never
        b = 0
        m = buf[c0 + 12]
        while m != 0:
            if m & 1:
                r = _dram_ready(T, S, ch, b, 1)
                if r < best_r:
                    best_r = r
            m >>= 1
            b += 1
        return max(best_r, t + 1)
    r = _dram_ref_ready(T, S, ch)
    if r > t:
        return r
    _dram_issue(T, S, ch, -1, 4, t, -1, -1)
    buf[c0 + 7] += T.nREFI
    buf[c0 + 6] = 0
    return -1


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def _dram_mode_flips(T, S, ch):
    """Whether the read/write mode changes at the channel's next step: reads switch to writes
    when the write queue reaches its high watermark or no read waits; writes switch back when
    the write queue is empty, or down to its low watermark with reads waiting."""
    c0 = S.o_chn + 24 * ch
    nr = S.buf[c0 + 13]
    nw = S.buf[c0 + 14]
    if S.buf[c0 + 5] == 0:
        return nw >= T.wq_hi or (nr == 0 and nw > 0)
    return nw == 0 or (nr > 0 and nw <= T.wq_lo)


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def _dram_step(T, S, ch, t):
    """Everything channel ``ch`` can do at cycle ``t``; returns its next cycle of interest
    (for an idle channel, the next refresh), also kept at channel field 10.

    FR-FCFS: among queued requests of the current type (reads, or writes while draining), the
    oldest whose bank has its row open and whose column command is legal at ``t`` goes first;
    on the row bus (or the same bus, when there is one), the oldest legal ACT (bank closed) or
    PRE (another row open, no queued hit) for a queued request; closed-page, then a PRE for an
    open bank that no queued request hits. The scan and the column command are written out
    here rather than called (module doc: the hot path).

    The next cycle after issuing is a lower bound, not a second scan: for each kind of
    candidate, the earliest cycle the scan saw (t itself if another one was ready), raised by
    the channel-level distance from the commands just issued, and for the banks the issue
    itself changed, the distance from that command at all levels. Constraints only ever
    move later, so the bound is never late; when it is early the next call finds nothing to
    do and returns the exact cycle. ``T.exact_next = 1`` scans again instead (a test checks
    both give the same commands)."""
    never = 1 << 62
    buf = S.buf
    tab = T.tab
    NB = T.n_banks
    c0 = S.o_chn + 24 * ch
    if buf[c0 + 6] == 0 and t >= buf[c0 + 7]:
        buf[c0 + 6] = 1
    if buf[c0 + 6] == 1:
        tn = _dram_refresh_step(T, S, ch, t)
        if tn >= 0:
            buf[c0 + 10] = tn
            return tn
    # write drain between watermarks
    if _dram_mode_flips(T, S, ch):
        buf[c0 + 5] = 1 - buf[c0 + 5]
    typ = buf[c0 + 5]
    C = 2 + typ
    lb = S.o_bl + 8 * (ch * 2 + typ) * NB               # this type's bank lists
    kb0 = S.o_bk + 8 * ch * NB
    kg0 = S.o_bg + 8 * ch * T.n_bg
    h0 = S.o_hot + S.hot_w * ch
    oe = S.o_ent
    sh = T.bpg_shift
    nwin = T.n_win
    W1 = S.win_w + 1
    tn = never
    for _ in range(4):
        # ---- scan. Window readiness (tFAW) once per scan.
        okC = buf[c0 + C]
        okA = buf[c0]
        okP = buf[c0 + 1]
        for w in range(nwin):
            base = S.o_win + (w * T.n_ch + ch) * W1
            v = buf[base + buf[base + W1 - 1]] + tab[T.o_win + 3 * nwin + w]
            after = tab[T.o_win + nwin + w]
            if (after >> C) & 1 and v > okC:
                okC = v
            if after & 1 and v > okA:
                okA = v
            if (after >> 1) & 1 and v > okP:
                okP = v
        hits = buf[c0 + 19 + typ]
        # column candidates: the oldest row-hitting entry of each bank with a hit
        col_e = -1
        col_prev = -1
        col_b = -1
        best = never
        n_col = 0                                       # ready at t
        min_col = never                                 # earliest of those not ready
        # One bank group at a time. A bank's readiness is max(okC, its group's, its own);
        # when no bank of the group is constrained past max(okC, the group's) (group word
        # 3 + C keeps the latest bank-level RD / WR cycle of its banks), every hitting bank
        # of the group is ready at that one cycle, and the group's cached oldest hit
        # (_dram_group_oldest) is the candidate: ages are unique, so the pick, the count and
        # the earliest cycle are the bank-by-bank scan's. Unsigned indices: numba then skips
        # its negative-index wraparound.
        kgC = kg0 + C
        kbC = h0 + typ * NB                             # banks' C readiness (hot copies)
        lb5 = h0 + (2 + typ) * NB                       # banks' oldest-hit ages (hot copies)
        gh = h0 + 4 * NB + 2 * typ * T.n_bg
        bpg = T.n_bpg
        gmask = (1 << bpg) - 1
        for g in range(T.n_bg):
            hg = (hits >> (g << sh)) & gmask
            if hg == 0:
                continue
            gate = buf[np.uint64(kgC + 8 * g)]
            if okC > gate:
                gate = okC
            if buf[np.uint64(kg0 + 8 * g + 3 + C)] <= gate:
                if gate <= t:
                    while hg != 0:
                        hg &= hg - 1
                        n_col += 1
                    s = buf[np.uint64(gh + 2 * g)]
                    if s < best:
                        best = s
                        col_b = buf[np.uint64(gh + 2 * g + 1)]
                elif gate < min_col:
                    min_col = gate
                continue
            m = hg << (g << sh)
            while m != 0:
                b = trailing_zeros(m)
                m &= m - 1
                r = buf[np.uint64(kbC + b)]
                if gate > r:
                    r = gate
                if r <= t:
                    n_col += 1
                    s = buf[np.uint64(lb5 + b)]         # age of the bank's oldest hit
                    if s < best:
                        best = s
                        col_b = b
                elif r < min_col:
                    min_col = r
        if col_b >= 0:
            col_e = buf[lb + 8 * col_b + 3]
            col_prev = buf[lb + 8 * col_b + 4]
        # row candidates: banks with queued entries and no hit need an ACT or a PRE
        row_b = -1
        row_cmd = -1
        row_kind = 0
        best = never
        n_act = 0
        min_act = never
        n_pre = 0
        min_pre = never
        m = buf[c0 + 17 + typ] & ~hits
        while m != 0:
            b = trailing_zeros(m)
            m &= m - 1
            kb = kb0 + 8 * b
            if buf[np.uint64(kb + 5)] < 0:
                cmd = 0
                r = okA
            else:
                cmd = 1
                r = okP
            v = buf[np.uint64(kg0 + 8 * (b >> sh) + cmd)]
            if v > r:
                r = v
            v = buf[np.uint64(kb + cmd)]
            if v > r:
                r = v
            if r <= t:
                if cmd == 0:
                    n_act += 1
                else:
                    n_pre += 1
                s = buf[np.uint64(oe + 8 * buf[np.uint64(lb + 8 * b)] + 5)]
                if s < best:
                    best = s
                    row_b = b
                    row_cmd = cmd
            elif cmd == 0:
                if r < min_act:
                    min_act = r
            elif r < min_pre:
                min_pre = r
        if T.closed_page == 1:
            m = buf[c0 + 12] & ~(buf[c0 + 19] | buf[c0 + 20]) & ~buf[c0 + 17 + typ]
            while m != 0:
                b = trailing_zeros(m)
                m &= m - 1
                r = okP
                v = buf[kg0 + 8 * (b >> sh) + 1]
                if v > r:
                    r = v
                v = buf[kb0 + 8 * b + 1]
                if v > r:
                    r = v
                if r <= t:
                    n_pre += 1
                    if row_b < 0:
                        row_b = b
                        row_cmd = 1
                        row_kind = 2
                elif r < min_pre:
                    min_pre = r
        tn = min(min_col, min_act, min_pre)
        if col_e < 0 and row_b < 0:
            break
        bound = never                                   # candidates the issue creates
        kC = -(1 << 40)                                 # channel distance from what issued
        kA = -(1 << 40)
        kP = -(1 << 40)
        # ---- the column command (a row hit); retire the request after its last burst
        if col_e >= 0:
            n_col -= 1
            b = col_b
            k0 = kb0 + 8 * b
            e0 = oe + 8 * col_e
            # the command's constraints (as _dram_issue does; written out: the hot path)
            g0 = kg0 + 8 * (b >> sh)
            m = tab[75 + C]
            while m != 0:
                f = trailing_zeros(m)
                m &= m - 1
                v = t + tab[C * 5 + f]
                if v > buf[c0 + f]:
                    buf[c0 + f] = v
            m = tab[80 + C]
            while m != 0:
                f = trailing_zeros(m)
                m &= m - 1
                v = t + tab[25 + C * 5 + f]
                if v > buf[g0 + f]:
                    buf[g0 + f] = v
            m = tab[85 + C]
            while m != 0:
                f = trailing_zeros(m)
                m &= m - 1
                v = t + tab[50 + C * 5 + f]
                if v > buf[k0 + f]:
                    buf[k0 + f] = v
                    if f >= 2 and f <= 3:
                        buf[h0 + (f - 2) * NB + b] = v
                        if v > buf[g0 + 3 + f]:
                            buf[g0 + 3 + f] = v
            for w in range(nwin):
                if (tab[T.o_win + w] >> C) & 1:
                    base = S.o_win + (w * T.n_ch + ch) * W1
                    p = buf[base + W1 - 1]
                    buf[base + p] = t
                    p += 1
                    if p == tab[T.o_win + 2 * nwin + w]:
                        p = 0
                    buf[base + W1 - 1] = p
            n0 = S.o_cnt + 16 * ch
            buf[n0 + C] += 1
            nt = buf[S.o_glob + 2]
            if nt < S.trace_cap:
                o = S.o_trace + 7 * nt
                buf[o] = t
                buf[o + 1] = ch
                buf[o + 2] = b >> sh
                buf[o + 3] = b - ((b >> sh) << sh)
                buf[o + 4] = buf[k0 + 5]
                buf[o + 5] = buf[e0 + 3]
                buf[o + 6] = C
            buf[S.o_glob + 2] = nt + 1
            buf[n0 + 5 + buf[k0 + 6]] += 1              # row_hits / misses / conflicts
            buf[k0 + 6] = 0
            c = buf[e0 + 3] + 1
            if c == T.columns:
                c = 0
            buf[e0 + 3] = c
            buf[e0 + 4] -= 1
            if buf[e0 + 4] == 0:
                lo = lb + 8 * b
                nxt = buf[e0 + 6]
                if col_prev < 0:
                    buf[lo] = nxt
                else:
                    buf[oe + 8 * col_prev + 6] = nxt
                if buf[lo + 1] == col_e:
                    buf[lo + 1] = col_prev
                if buf[lo] < 0:
                    buf[c0 + 17 + typ] &= ~(1 << b)
                buf[lo + 2] -= 1
                if buf[lo + 2] == 0:
                    buf[c0 + 19 + typ] &= ~(1 << b)
                    buf[lo + 3] = -1
                else:
                    # the next oldest hit: walk on from the retired entry's successor
                    row = buf[k0 + 5]
                    p = col_prev
                    x = nxt
                    while buf[oe + 8 * x + 2] != row:
                        p = x
                        x = buf[oe + 8 * x + 6]
                    buf[lo + 3] = x
                    buf[lo + 4] = p
                    buf[lo + 5] = buf[oe + 8 * x + 5]
                    buf[h0 + (2 + typ) * NB + b] = buf[lo + 5]
                _dram_group_oldest(T, S, ch, typ, b >> sh)
                fb = S.o_free + ch * (T.rq_cap + T.wq_cap) + (T.rq_cap if typ == 1 else 0)
                buf[fb + buf[c0 + 15 + typ]] = col_e
                buf[c0 + 15 + typ] += 1
                buf[c0 + 13 + typ] -= 1
                req = buf[e0]
                if typ == 0:
                    buf[S.o_comp + req] = t + T.rd_lat
                    buf[n0 + 8] += buf[e0 + 7]          # bytes_read
                    buf[n0 + 12] += 1                   # reads_done
                else:
                    buf[S.o_comp + req] = t + T.wr_lat
                    buf[n0 + 9] += buf[e0 + 7]          # bytes_written
                    buf[n0 + 13] += 1                   # writes_done
                g2 = S.o_glob
                k = buf[g2 + 3]                         # FIFO tail index (wraps)
                buf[S.o_done + k] = req
                k += 1
                buf[g2 + 3] = 0 if k == S.req_cap else k
                buf[g2 + 1] += 1
            # the same bank next: another column command, or a PRE (conflict, closed page)
            if (buf[c0 + 19 + typ] >> b) & 1:
                bound = min(bound, t + tab[90 + C * 5 + C])
            else:
                bound = min(bound, t + tab[90 + C * 5 + 1])
            kC = max(kC, t + tab[C * 5 + C])
            kA = max(kA, t + tab[C * 5])
            kP = max(kP, t + tab[C * 5 + 1])
        # ---- the row command, if still legal after the column command
        if row_b >= 0 and _dram_ready(T, S, ch, row_b, row_cmd) <= t:
            if row_cmd == 0:
                n_act -= 1
                e = buf[lb + 8 * row_b]
                _dram_activate(T, S, ch, row_b, buf[oe + 8 * e + 2], t)
                bound = min(bound, t + tab[90 + C])
                bound = min(bound, t + tab[91])
            else:
                n_pre -= 1
                _dram_precharge(T, S, ch, row_b, t, row_kind)
                bound = min(bound, t + tab[95])
            kC = max(kC, t + tab[row_cmd * 5 + C])
            kA = max(kA, t + tab[row_cmd * 5])
            kP = max(kP, t + tab[row_cmd * 5 + 1])
        # a retirement that flips the read/write mode makes the other queue's candidates count
        if _dram_mode_flips(T, S, ch):
            tn = t + 1
            break
        if T.exact_next == 1:
            continue
        # ---- lower bound of the next cycle (docstring)
        tn = bound
        v = max(t if n_col > 0 else min_col, kC)
        if v < tn:
            tn = v
        v = max(t if n_act > 0 else min_act, kA)
        if v < tn:
            tn = v
        v = max(t if n_pre > 0 else min_pre, kP)
        if v < tn:
            tn = v
        if tn > t:
            break
    if buf[c0 + 7] < tn:
        tn = buf[c0 + 7]
    if tn <= t:
        tn = t + 1
    buf[c0 + 10] = tn
    return tn


@njit(cache=True, error_model="numpy", _nrt=False)
def _dram_advance_idle(T, S, ch, until):
    """An idle channel does what it would have done before cycle ``until``: what
    ``_dram_step`` does with both queues empty, at each cycle it would have returned (refresh
    when due, and the read/write mode update), without its scan (which finds nothing)."""
    buf = S.buf
    c0 = S.o_chn + 24 * ch
    while buf[c0 + 10] < until:
        t = buf[c0 + 10]
        if buf[c0 + 6] == 0 and t >= buf[c0 + 7]:
            buf[c0 + 6] = 1
        if buf[c0 + 6] == 1:
            tn = _dram_refresh_step(T, S, ch, t)
            if tn >= 0:
                buf[c0 + 10] = tn
                continue
        if _dram_mode_flips(T, S, ch):
            buf[c0 + 5] = 1 - buf[c0 + 5]
        buf[c0 + 10] = max(buf[c0 + 7], t + 1)


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def dram_enqueue(T, S, req, addr, nbytes, is_write, now):
    """Offer a request; False when the channel's queue for its type is full (see module doc)."""
    return _dram_enqueue(T, S, req, addr, nbytes, is_write, now) >= 0


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def _dram_enqueue(T, S, req, addr, nbytes, is_write, now):
    """dram_enqueue; returns the queue entry used, or -1 when the queue is full."""
    buf = S.buf
    ch, bg, ba, row, col = dram_map(T, addr)
    typ = 1 if is_write else 0
    c0 = S.o_chn + 24 * ch
    cap = T.wq_cap if typ == 1 else T.rq_cap
    if buf[c0 + 13 + typ] >= cap:
        return -1
    if buf[c0 + 11] == 1:
        _dram_advance_idle(T, S, ch, now)
        buf[c0 + 11] = 0
    b = (bg << T.bpg_shift) + ba
    fb = S.o_free + ch * (T.rq_cap + T.wq_cap) + (T.rq_cap if typ == 1 else 0)
    buf[c0 + 15 + typ] -= 1
    e = buf[fb + buf[c0 + 15 + typ]]
    buf[c0 + 13 + typ] += 1
    e0 = S.o_ent + 8 * e
    buf[e0] = req
    buf[e0 + 1] = b
    buf[e0 + 2] = row
    buf[e0 + 3] = col
    buf[e0 + 4] = ((addr & (T.gran_bytes - 1)) + nbytes + T.gran_bytes - 1) >> T.gran_shift
    buf[e0 + 5] = buf[c0 + 9]
    buf[c0 + 9] += 1
    buf[e0 + 6] = -1
    buf[e0 + 7] = nbytes
    lo = S.o_bl + 8 * ((ch * 2 + typ) * T.n_banks + b)
    tail = buf[lo + 1]
    if buf[lo] < 0:
        buf[lo] = e
        tail = -1
    else:
        buf[S.o_ent + 8 * tail + 6] = e
    buf[lo + 1] = e
    buf[c0 + 17 + typ] |= 1 << b
    if buf[S.o_bk + 8 * (ch * T.n_banks + b) + 5] == row:
        buf[lo + 2] += 1
        if buf[lo + 2] == 1:
            buf[lo + 3] = e
            buf[lo + 4] = tail
            buf[lo + 5] = buf[e0 + 5]
            buf[c0 + 19 + typ] |= 1 << b
            h0 = S.o_hot + S.hot_w * ch
            buf[h0 + (2 + typ) * T.n_banks + b] = buf[e0 + 5]
            o = h0 + 4 * T.n_banks + 2 * (typ * T.n_bg + bg)
            if buf[o + 1] < 0:                          # the youngest: oldest only if alone
                buf[o] = buf[e0 + 5]
                buf[o + 1] = b
    buf[S.o_enq + req] = now
    buf[S.o_comp + req] = -1
    return e


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def _dram_entry_ready(T, S, ch, e):
    """Earliest cycle queue entry ``e`` could have its first command issued: its bank's
    readiness for the column command (row open), ACT (closed) or PRE (another row open).
    A lower bound: the scheduler may still pick other requests first."""
    buf = S.buf
    b = buf[S.o_ent + 8 * e + 1]
    open_row = buf[S.o_bk + 8 * (ch * T.n_banks + b) + 5]
    if open_row == buf[S.o_ent + 8 * e + 2]:
        cmd = 2 + (1 if e - ch * (T.rq_cap + T.wq_cap) >= T.rq_cap else 0)
    elif open_row < 0:
        cmd = 0
    else:
        cmd = 1
    r = max(buf[S.o_chn + 24 * ch + cmd],
            max(buf[S.o_bg + 8 * (ch * T.n_bg + (b >> T.bpg_shift)) + cmd],
                buf[S.o_bk + 8 * (ch * T.n_banks + b) + cmd]))
    return max(r, _dram_win_ready(T, S, ch, cmd))


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def dram_service(T, S, ch, now):
    """Do what channel ``ch`` can do at cycle ``now``; next cycle or DRAM_NEVER (module doc)."""
    buf = S.buf
    c0 = S.o_chn + 24 * ch
    if buf[c0 + 11] == 1:
        _dram_advance_idle(T, S, ch, now)
        return 1 << 62
    tn = _dram_step(T, S, ch, now)
    if (buf[c0 + 13] + buf[c0 + 14] == 0 and buf[c0 + 6] == 0
            and (T.closed_page == 0 or buf[c0 + 12] == 0)):
        buf[c0 + 11] = 1
        return 1 << 62
    return tn


@njit(cache=True, error_model="numpy", _nrt=False, inline="always")
def dram_pop_done(S):
    """Next finished request id from the done FIFO, or -1 when it is empty."""
    buf = S.buf
    h = buf[S.o_glob]
    if h == buf[S.o_glob + 1]:
        return -1
    buf[S.o_glob] = h + 1
    return buf[S.o_done + h % S.req_cap]          # rare: once per request, by the caller


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_finish(T, S, end):
    """Refresh idle channels up to ``end`` (inclusive) and close the active-cycle counts."""
    buf = S.buf
    for ch in range(T.n_ch):
        c0 = S.o_chn + 24 * ch
        if buf[c0 + 11] == 1:
            _dram_advance_idle(T, S, ch, end + 1)
        if buf[c0 + 12] != 0 and end > buf[c0 + 8]:
            buf[S.o_cnt + 16 * ch + 11] += end - buf[c0 + 8]
            buf[c0 + 8] = end
        n0 = S.o_cnt + 16 * ch
        buf[n0 + 10] = (buf[n0 + 2] + buf[n0 + 3]) * T.nBL   # busy_cycles


@njit(cache=True, error_model="numpy", _nrt=False)
def dram_run(T, S, addr, nbytes, is_write, arrival, ch_start, ch_end):
    """The standalone driver (module doc). Returns the number of service calls made;
    finishes with ``dram_finish`` at the last completion.

    With one in-order injector per channel, channels never interact, so the driver runs them
    one after another: channel c's whole run, then channel c + 1's. Every command, cycle and
    completion is what an interleaved run gives; only the trace comes out grouped by
    channel, and one channel's state stays in cache."""
    never = 1 << 62
    events = 0
    for c in range(T.n_ch):
        p = ch_start[c]
        end = ch_end[c]
        if p == end:
            continue
        c0 = S.o_chn + 24 * c
        t = arrival[p]
        while True:
            while p < end:
                if arrival[p] > t:
                    break
                w = 1 if is_write[p] else 0
                if S.buf[c0 + 13 + w] >= (T.wq_cap if w == 1 else T.rq_cap):
                    break                               # full: retry when a slot frees
                dram_enqueue(T, S, p, addr[p], nbytes[p], is_write[p], t)
                p += 1
            nxt = dram_service(T, S, c, t)
            events += 1
            # requests refused earlier take the slots this call freed; first considered at t+1
            while p < end:
                if arrival[p] > t:
                    break
                w = 1 if is_write[p] else 0
                if S.buf[c0 + 13 + w] >= (T.wq_cap if w == 1 else T.rq_cap):
                    break
                e = _dram_enqueue(T, S, p, addr[p], nbytes[p], is_write[p], t)
                r = max(_dram_entry_ready(T, S, c, e), t + 1)
                if r < nxt:
                    nxt = r
                p += 1
            if nxt > t + 1 and _dram_mode_flips(T, S, c):
                nxt = t + 1                             # the new requests flip the mode
            if p < end:
                a = arrival[p]
                if t < a < nxt:
                    nxt = a
            if nxt == never:
                break
            t = nxt
    last = 0
    for i in range(addr.shape[0]):
        v = S.buf[S.o_comp + i]
        if v > last:
            last = v
    dram_finish(T, S, last)
    return events


INF = np.int64(2**62)

# ============================================================================================
# Event queue: a binary min-heap of (time, seq) keys with an int64 payload.
# Same-time events pop in the order they were pushed (seq), so runs are deterministic.
# The chip loop puts events due soon in a calendar ring instead (cal_new, ev_push, ev_pop):
# O(1) per event, and the same pop order, as a pop takes the smaller key of both. Each bucket
# is a FIFO in sequence order; ev_push_seq (SRAM stream events, whose sequence numbers were
# taken earlier) inserts in order: the 119 M stream events of a llama-3-8b prefill-2048 layer
# then leave the heap (77 -> 70 s).
# ============================================================================================


@njit(cache=True)
def heap_new(capacity):
    """An empty heap: one int64 array, [size, next_seq, then (time, seq, payload) per slot].
    One array (not a tuple of arrays) keeps reference counting and cache misses down."""
    hb = np.empty(2 + 3 * capacity, np.int64)
    hb[0] = 0
    hb[1] = 0
    return hb


@njit(cache=True)
def heap_size(h):
    return h[0]


@njit(cache=True)
def heap_grow(h):
    """A copy of heap ``h`` with twice the slots."""
    h2 = np.empty(2 + 2 * (h.shape[0] - 2), np.int64)
    h2[:h.shape[0]] = h
    return h2


@njit(cache=True, _nrt=False, inline="always")
def _heap_sift_up(h, i, time, seq, payload):
    while i > 0:
        parent = (i - 1) >> 1
        b = 2 + 3 * parent
        if h[b] < time or (h[b] == time and h[b + 1] < seq):
            break
        d = 2 + 3 * i
        h[d], h[d + 1], h[d + 2] = h[b], h[b + 1], h[b + 2]
        i = parent
    d = 2 + 3 * i
    h[d], h[d + 1], h[d + 2] = time, seq, payload


@njit(cache=True, _nrt=False, inline="always")
def heap_put(h, time, payload):
    """Push into a heap with a free slot (not checked: numba does no bounds checks)."""
    i = h[0]
    h[0] += 1
    seq = h[1]
    h[1] += 1
    _heap_sift_up(h, i, time, seq, payload)


@njit(cache=True, _nrt=False, inline="always")
def heap_put_seq(h, time, seq, payload):
    """heap_put with a sequence number taken earlier (``h[1]`` is not advanced)."""
    i = h[0]
    h[0] += 1
    _heap_sift_up(h, i, time, seq, payload)


@njit(cache=True)
def heap_push(h, time, payload):
    """Push; returns the heap (a new one when it had to grow)."""
    if 2 + 3 * h[0] == h.shape[0]:
        h = heap_grow(h)
    heap_put(h, time, payload)
    return h


@njit(cache=True, _nrt=False, inline="always")
def heap_pop(h):
    """Remove the earliest event; returns (time, payload). The heap must not be empty."""
    top_t, top_p = h[2], h[4]
    h[0] -= 1
    n = h[0]
    if n > 0:
        e = 2 + 3 * n
        lt, ls, lp = h[e], h[e + 1], h[e + 2]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            bc = 2 + 3 * c
            if c + 1 < n:
                bd = bc + 3
                if h[bd] < h[bc] or (h[bd] == h[bc] and h[bd + 1] < h[bc + 1]):
                    c += 1
                    bc = bd
            if lt < h[bc] or (lt == h[bc] and ls < h[bc + 1]):
                break
            d = 2 + 3 * i
            h[d], h[d + 1], h[d + 2] = h[bc], h[bc + 1], h[bc + 2]
            i = c
        d = 2 + 3 * i
        h[d], h[d + 1], h[d + 2] = lt, ls, lp
    return top_t, top_p


@njit(cache=True)
def cal_new(log2_width, slots):
    """An empty calendar: a ring of ``2**log2_width`` (>= 64) one-cycle buckets holding up to
    ``slots`` (>= 1) events due within that many cycles of the current time, each bucket a FIFO in
    push order. One int64 array: [count, first free slot, current time (cycles), width, then
    4 unused; per bucket its first slot (-1: empty); per bucket its last slot; the bitmap of
    non-empty buckets (width / 64 words); then (seq, payload, next slot) per slot]."""
    w = 1 << log2_width
    o_slot = 8 + 2 * w + w // 64
    c = np.zeros(o_slot + 3 * slots, np.int64)
    c[3] = w
    c[8:8 + w] = -1
    for k in range(slots):
        c[o_slot + 3 * k + 2] = k + 1
    c[o_slot + 3 * (slots - 1) + 2] = -1
    return c


@njit(cache=True, _nrt=False, inline="always")
def ev_push_seq(h, c, time, seq, payload):
    """Queue an event at ``time`` (cycles, not before the current time) under sequence number
    ``seq``, taken earlier (``h[1]`` is not advanced; it may be older than events already
    queued at ``time``): in calendar ``c`` when it is due within its width and a slot is free,
    else in heap ``h`` (which must have a free slot). A bucket is kept in sequence order, so
    the event goes in after the last older one (at the tail when it is the newest, the usual
    case)."""
    w = c[3]
    k = c[1]
    if 0 <= time - c[2] < w and k >= 0:
        o_slot = 8 + 2 * w + (w >> 6)
        e = o_slot + 3 * k
        c[1] = c[e + 2]
        c[e] = seq
        c[e + 1] = payload
        b = time & (w - 1)
        first = c[8 + b]
        if first < 0:
            c[e + 2] = -1
            c[8 + b] = k
            c[8 + w + b] = k
            c[8 + 2 * w + (b >> 6)] |= np.int64(1) << (b & 63)
        elif c[o_slot + 3 * c[8 + w + b]] < seq:
            c[e + 2] = -1
            c[o_slot + 3 * c[8 + w + b] + 2] = k
            c[8 + w + b] = k
        elif seq < c[o_slot + 3 * first]:
            c[e + 2] = first
            c[8 + b] = k
        else:
            prev = first
            nxt = c[o_slot + 3 * prev + 2]
            while c[o_slot + 3 * nxt] < seq:
                prev = nxt
                nxt = c[o_slot + 3 * prev + 2]
            c[e + 2] = nxt
            c[o_slot + 3 * prev + 2] = k
        c[0] += 1
    else:
        heap_put_seq(h, time, seq, payload)


@njit(cache=True, _nrt=False, inline="always")
def ev_push(h, c, time, payload):
    """Queue an event at ``time`` (cycles, not before the current time) with the next
    sequence number: in calendar ``c`` when it is due within its width and a slot is free,
    else in heap ``h`` (which must have a free slot). Being the newest, it goes at the tail
    of its bucket."""
    seq = h[1]
    h[1] += 1
    ev_push_seq(h, c, time, seq, payload)


@njit(cache=True, _nrt=False, inline="always")
def ev_pop(h, c):
    """Remove the earliest (time, seq) event of calendar ``c`` and heap ``h`` (not both empty);
    returns (time, payload) and makes that time the calendar's current time."""
    w = c[3]
    cur = c[2]
    rt = INF
    b = 0
    if c[0] > 0:
        # the first non-empty bucket at or after the current time's, around the ring
        o_bm = 8 + 2 * w
        b0 = cur & (w - 1)
        wi = b0 >> 6
        word = c[o_bm + wi] & (np.int64(-1) << (b0 & 63))
        while word == 0:
            wi = (wi + 1) & ((w >> 6) - 1)
            word = c[o_bm + wi]
        b = (wi << 6) + trailing_zeros(word)
        rt = cur + ((b - b0) & (w - 1))
    o_slot = 8 + 2 * w + (w >> 6)
    if h[0] > 0 and (h[2] < rt or (h[2] == rt and h[3] < c[o_slot + 3 * c[8 + b]])):
        t, payload = heap_pop(h)
    else:
        k = c[8 + b]
        e = o_slot + 3 * k
        nxt = c[e + 2]
        c[8 + b] = nxt
        if nxt < 0:
            c[8 + 2 * w + (b >> 6)] &= ~(np.int64(1) << (b & 63))
        payload = c[e + 1]
        c[e + 2] = c[1]
        c[1] = k
        c[0] -= 1
        t = rt
    c[2] = t
    return t, payload


# ============================================================================================
# NoC: packets move head-first router to router; every link is a FCFS server (noc.py).
# A packet's head reaching router `node` at time t is one event; the caller routes it.
# ============================================================================================


@njit(cache=True, _nrt=False, inline="always")
def noc_inject(link_free, n_links, node, now, flits, inject_cycles):
    """Put a packet of ``flits`` on ``node``'s injection link at ``now``; returns the time its
    head reaches the node's router."""
    link = n_links + node
    depart = max(now, link_free[link])
    link_free[link] = depart + flits
    return depart + inject_cycles


@njit(cache=True, _nrt=False, inline="always")
def noc_hop(link_free, link_flits, next_link, link_dst, n_links, n_nodes, node, dst, now, flits,
            router_cycles, link_cycles):
    """The head of a packet for ``dst`` is at router ``node`` at ``now``.

    Returns (next_node, time): the router the head reaches next and when; or (-1, t_tail)
    when the packet leaves through the ejection link at ``node`` and its tail is delivered at
    ``t_tail``. ``link_flits`` counts flits per link (flit-hops for energy)."""
    if node == dst:
        link = n_links + n_nodes + node
        depart = max(now + router_cycles, link_free[link])
        link_free[link] = depart + flits
        link_flits[link] += flits
        return -1, depart + flits - 1
    link = next_link[node, dst]
    depart = max(now + router_cycles, link_free[link])
    link_free[link] = depart + flits
    link_flits[link] += flits
    return link_dst[link], depart + link_cycles


@njit(cache=True)
def noc_run_traffic(src, dst, flits, t_create, next_link, link_dst, n_links, n_nodes,
                    router_cycles, link_cycles, inject_cycles):
    """Deliver packets (created at ``t_create``, sorted) on an otherwise idle NoC.

    Returns (t_done int64[packet], link_flits int64[all links]). Used for synthetic traffic
    (the BookSim comparison) and by tests of the closed form."""
    n = src.shape[0]
    link_free = np.zeros(n_links + 2 * n_nodes, np.int64)
    link_flits = np.zeros(n_links + 2 * n_nodes, np.int64)
    t_done = np.full(n, -1, np.int64)
    h = heap_new(1024)
    # payload: packet id * 2^20 + node (+1, so 0 means "not yet injected")
    nxt = 0
    while nxt < n or h[0] > 0:
        if nxt < n and (h[0] == 0 or t_create[nxt] <= h[2]):
            p = nxt
            nxt += 1
            t = noc_inject(link_free, n_links, src[p], t_create[p], flits[p], inject_cycles)
            link_flits[n_links + src[p]] += flits[p]
            h = heap_push(h, t, p * 1048576 + src[p])
            continue
        t, payload = heap_pop(h)
        p = payload // 1048576
        node = payload % 1048576
        nn, tt = noc_hop(link_free, link_flits, next_link, link_dst, n_links, n_nodes, node,
                         dst[p], t, flits[p], router_cycles, link_cycles)
        if nn < 0:
            t_done[p] = tt
        else:
            h = heap_push(h, tt, p * 1048576 + nn)
    return t_done, link_flits


# ============================================================================================
# SRAM: streams share the banks of their core max-min fairly (sram.py has the model).
# Stream arrays (pool, index s): st_core, st_next (per-core active list), st_rem (bytes left),
# st_nom (nominal bytes/cycle), st_rate, st_t (time of last update), st_mask (uint64 banks),
# st_ver (version for lazy deletion of finish events), st_owner (payload to run at the end).
# ============================================================================================


@njit(cache=True, _nrt=False)
def _popcount(x):
    n = 0
    while x:
        x &= x - np.uint64(1)
        n += 1
    return n


@njit(cache=True, _nrt=False)
def sram_fill_rates(head, st_next, st_nom, st_mask, st_rate, n_banks, cap, scratch):
    """Progressive filling over the streams of one core's active list starting at ``head``.

    Every stream's rate rises together until its nominal rate or a saturated bank stops it.
    Rates and ``cap`` are bytes/cycle. ``scratch`` is a float64[3 * n_banks] work array.
    Loops visit only a stream's set bank bits below ``n_banks`` (a stream's share divides by
    all its bits), in ascending bank order, and each bank sums its streams in list order: the
    same floating-point operations, in the same order, as a walk over every bank.

    A bank's level, (cap - load) / share, is divided out only when a multiplication cannot
    show it to lie above 1 + 1e-9 times the lowest so far, all positive and at least the 1e-9
    floor (it then can neither be the minimum nor freeze a stream, whose test has a 1e-12
    margin); those divided out are kept for the freeze test. So the rates are bit for bit
    those of dividing at every bank, as this did before. (This function was a fifth of a
    llama-3-8b prefill-2048 layer's run time; skipping the divisions and stopping once every
    stream is frozen took that layer from 85.5 to 77 s.)"""
    load = scratch[:n_banks]          # bytes/cycle of frozen streams per bank
    share = scratch[n_banks:2 * n_banks]
    blev = scratch[2 * n_banks:3 * n_banks]   # a bank's level when divided out, else +inf
    one = np.uint64(1)
    low = ~np.uint64(0) if n_banks >= 64 else (one << np.uint64(n_banks)) - one
    load[:] = 0.0
    s = head
    while s >= 0:
        st_rate[s] = -1.0             # -1: not frozen yet
        s = st_next[s]
    while True:
        share[:] = 0.0
        any_open = False
        s = head
        while s >= 0:
            if st_rate[s] < 0.0:
                any_open = True
                m = st_mask[s]
                inv = 1.0 / max(_popcount(m), 1)    # (no bank: no share)
                m &= low
                while m:
                    share[trailing_zeros(m)] += inv
                    m &= m - one
            s = st_next[s]
        if not any_open:
            return
        level = 1e300
        for b in range(n_banks):
            blev[b] = np.inf
            if share[b] > 0.0:
                num = cap - load[b]
                if not (num > 0.0 and level >= 1e-9 and num > level * share[b] * (1.0 + 1e-9)):
                    lv = num / share[b]
                    blev[b] = lv
                    if lv < level:
                        level = lv
        s = head
        while s >= 0:
            if st_rate[s] < 0.0 and st_nom[s] < level:
                level = st_nom[s]
            s = st_next[s]
        if level < 1e-9:
            level = 1e-9
        # freeze streams held by their nominal rate or by a bank at the level
        still_open = False
        s = head
        while s >= 0:
            if st_rate[s] < 0.0:
                freeze = st_nom[s] <= level * (1.0 + 1e-12)
                if not freeze:
                    m = st_mask[s] & low
                    while m:
                        b = trailing_zeros(m)
                        m &= m - one
                        if blev[b] <= level * (1.0 + 1e-12):
                            freeze = True
                            break
                if freeze:
                    st_rate[s] = level
                else:
                    still_open = True
            s = st_next[s]
        if not still_open:
            return
        # account frozen streams' load
        load[:] = 0.0
        s = head
        while s >= 0:
            if st_rate[s] >= 0.0:
                m = st_mask[s]
                x = st_rate[s] / max(_popcount(m), 1)
                m &= low
                while m:
                    load[trailing_zeros(m)] += x
                    m &= m - one
            s = st_next[s]


@njit(cache=True, _nrt=False)
def sram_stream_start(core, nbytes, nominal, mask, owner, now, c_head, st, n_banks, cap,
                      scratch):
    """Start a stream on ``core``; returns its id. ``st`` is the stream pool tuple."""
    (st_core, st_next, st_rem, st_nom, st_rate, st_t, st_mask, st_ver, st_owner, free) = st
    s = free[0]
    if s < 0:
        return -1
    free[0] = st_next[s]
    st_core[s], st_rem[s], st_nom[s], st_mask[s], st_owner[s] = core, nbytes, nominal, mask, owner
    st_t[s] = now
    st_ver[s] += 1
    st_next[s] = c_head[core]
    c_head[core] = s
    return s


@njit(cache=True, _nrt=False)
def sram_settle(core, now, c_head, st):
    """Bring every stream of ``core`` up to ``now`` at its current rate."""
    (st_core, st_next, st_rem, st_nom, st_rate, st_t, st_mask, st_ver, st_owner, free) = st
    s = c_head[core]
    while s >= 0:
        if st_t[s] < now:
            st_rem[s] -= st_rate[s] * (now - st_t[s])
            if st_rem[s] < 0.0:
                st_rem[s] = 0.0
            st_t[s] = now
        s = st_next[s]


@njit(cache=True, _nrt=False)
def sram_remove(core, s, c_head, st):
    """Take stream ``s`` off its core's active list and return it to the pool."""
    (st_core, st_next, st_rem, st_nom, st_rate, st_t, st_mask, st_ver, st_owner, free) = st
    prev = -1
    cur = c_head[core]
    while cur >= 0 and cur != s:
        prev = cur
        cur = st_next[cur]
    if prev < 0:
        c_head[core] = st_next[s]
    else:
        st_next[prev] = st_next[s]
    st_ver[s] += 1
    st_next[s] = free[0]
    free[0] = s


@njit(cache=True, _nrt=False)
def _core_event(h, cq, core, c_head, st_next, st_fin, st_seq, st_live, c_ver, c_sel):
    """Queue one EV_STREAM event for ``core``: its live stream with the earliest (finish, seq)
    key, under the key that stream's own event would have had (one event per core, not per
    stream; the same pop order). Invalidates the core's previous event."""
    c_ver[core] += 1
    best = -1
    x = c_head[core]
    while x >= 0:
        if st_live[x]:
            if best < 0 or st_fin[x] < st_fin[best] or \
                    (st_fin[x] == st_fin[best] and st_seq[x] < st_seq[best]):
                best = x
        x = st_next[x]
    c_sel[core] = best
    if best >= 0:
        ev_push_seq(h, cq, st_fin[best], st_seq[best], 2 + 16 * (core + (c_ver[core] << 28)))


@njit(cache=True, _nrt=False)
def _stream_events(h, cq, core, t, c_head, st_next, st_rem, st_rate, st_fin, st_seq, st_live, c_ver,
                   c_sel):
    """After a re-balance of ``core``: every stream's finish time and the sequence number its
    event takes; returns the latest finish time."""
    tmx = np.int64(-1)
    x = c_head[core]
    while x >= 0:
        fin = t + max(np.int64(0), np.int64(np.ceil(st_rem[x] / st_rate[x] - 1e-9)))
        st_fin[x] = fin
        st_seq[x] = h[1]
        h[1] += 1
        st_live[x] = True
        if fin > tmx:
            tmx = fin
        x = st_next[x]
    _core_event(h, cq, core, c_head, st_next, st_fin, st_seq, st_live, c_ver, c_sel)
    return tmx


@njit(cache=True, _nrt=False)
def _rebalance(h, cq, core, t, c_head, st, n_banks, cap, scratch, st_fin, st_seq, st_live, c_ver,
               c_sel):
    """Re-share ``core``'s banks among its streams and queue the core's next stream event;
    returns the latest finish time."""
    (st_core, st_next, st_rem, st_nom, st_rate, st_t, st_mask, st_ver, st_owner, free) = st
    sram_fill_rates(c_head[core], st_next, st_nom, st_mask, st_rate, n_banks, cap, scratch)
    return _stream_events(h, cq, core, t, c_head, st_next, st_rem, st_rate, st_fin, st_seq, st_live,
                          c_ver, c_sel)


@njit(cache=True, _nrt=False)
def _open_stream(h, cq, core, t, nbytes, nominal, mask, owner, c_head, st, n_banks, cap, scratch,
                 st_fin, st_seq, st_live, c_ver, c_sel):
    """Bring ``core``'s streams up to ``t``, start one more (``nbytes`` at up to ``nominal``
    bytes/cycle over the banks of ``mask``, for ``owner``) and re-balance. Returns
    (ok, latest finish time); ok is False when the stream pool is exhausted."""
    sram_settle(core, t, c_head, st)
    if sram_stream_start(core, nbytes, nominal, mask, owner, t, c_head, st, n_banks, cap,
                         scratch) < 0:
        return False, np.int64(-1)
    tmx = _rebalance(h, cq, core, t, c_head, st, n_banks, cap, scratch, st_fin, st_seq, st_live,
                     c_ver, c_sel)
    return True, tmx


# ============================================================================================
# Chip event loop
# ============================================================================================

# event kinds (low 4 bits of a payload)
EV_TRY = 0       # engine g: try to begin its head instruction
EV_DONE = 1      # instruction i finishes (matrix drain / vector latency over)
EV_STREAM = 2    # SRAM stream s (version in the high bits) may be finished
EV_HOP = 3       # packet p's head reaches its next router
EV_ARRIVE = 4    # packet p's tail is delivered
EV_DRAM = 5      # memory channel ch needs service
EV_DMA = 6       # DMA engine g may issue its next request
EV_REQ = 7       # request r's DRAM access has finished

# engine states
ENG_IDLE = 0
ENG_WAIT_SEM = 1
ENG_WAIT_RES = 2
ENG_BUSY = 3
ENG_DONE = 4

# request kinds and stages
RQ_LOAD = 0
RQ_STORE = 1
RQ_COPY = 2
RQ_MCAST = 3      # a LOAD to other cores' SRAM (dst_core >= 0): one read, one or more copies

NOC_CTRL_BYTES = 16
"""Bytes of a packet without data (a read request or a write acknowledgement: address, size
and tag), for NoC energy. An assumption, not a sourced figure; data packets count their
payload."""

MC_DELIVER = -2   # p_mc of a multicast copy on its way into a destination's SRAM

# error codes
ERR_NONE = 0
ERR_SRAM_RANGE = 1
ERR_DRAM_RANGE = 2
ERR_EVENTS = 3
ERR_POOL = 4
ERR_CORE = 5


@njit(cache=True, _nrt=False)
def _signal(h, cq, sems, t, sem_cnt, sem_head, w_next, state):
    """An instruction completes at ``t``: count its signals (``sems``, -1 = none) and wake every
    engine queued on those semaphores (EV_TRY at ``t``)."""
    for k in range(sems.shape[0]):
        sm = sems[k]
        if sm >= 0:
            sem_cnt[sm] += 1
            w = sem_head[sm]
            sem_head[sm] = -1
            while w >= 0:
                nw = w_next[w]
                w_next[w] = -1
                state[w] = ENG_IDLE
                ev_push(h, cq, t, EV_TRY + 16 * w)
                w = nw


@njit(cache=True, _nrt=False, inline="always")
def _ceil_div(a, b):
    """ceil(a / b) for integers (b > 0)."""
    return -((-a) // b)


@njit(cache=True, nogil=True)
def chip_run(instrs, i_eng, q_start, q_end, eng_kind, eng_core,
             dur_a, dur_b, s_read, s_write, s_mask, elem_bits,
             prm, cap, core_node,
             next_link, link_dst, n_links, n_nodes,
             dram_T, dram_S, ch_node, max_events):
    """Run a program to completion. Times are core cycles.

    ``prm`` (int64): n_sems, max_outstanding, request_bytes, flit_bytes, weight_double_buffer,
    n_banks, sram_size, dram_capacity, router_cycles, link_cycles, inject_cycles, core_fs,
    dram_fs, n_channels, dma_engines, bank_width_bytes, dataflow (0 ws, 1 os, 2 is), rows,
    request pool size, DRAM chunk bytes (a request never crosses one).

    Returns (t_issue, t_start, t_end, link_flits, sram_rd, sram_wr, req_count, dram_bytes,
    t_final, err, err_instr, sem_cnt, ev_count, byte_hops).

    This function allocates the state; ``_chip_loop`` runs the events without reference
    counting, returning here only when the event heap must grow. It releases the GIL
    (``tilesim.simulate`` collects other workers' results meanwhile)."""
    n_instr = instrs.shape[0]
    n_eng = q_start.shape[0]
    n_cores = core_node.shape[0]
    n_sems = prm[0]
    n_banks = prm[5]
    n_ch = prm[13]
    pool = prm[18]

    t_issue = np.full(n_instr, -1, np.int64)
    t_start = np.full(n_instr, -1, np.int64)
    t_end = np.full(n_instr, -1, np.int64)
    i_pending = np.zeros(n_instr, np.int64)
    i_issued_all = np.zeros(n_instr, np.bool_)

    # engines
    pc = q_start.copy()
    state = np.zeros(n_eng, np.int64)
    w_next = np.full(n_eng, -1, np.int64)      # semaphore waiter lists
    sem_head = np.full(max(n_sems, 1), -1, np.int64)
    sem_cnt = np.zeros(max(n_sems, 1), np.int64)
    m_ldw_busy = np.zeros(n_eng, np.bool_)
    m_accept_end = np.full(n_eng, -INF, np.int64)   # when the last MM stopped accepting rows
    m_stream_busy = np.zeros(n_eng, np.bool_)
    m_mm_inflight = np.zeros(n_eng, np.int64)
    d_instr = np.full(n_eng, -1, np.int64)
    d_idx = np.zeros((n_eng, 4), np.int64)     # outer indices + element index
    d_off = np.zeros(n_eng, np.int64)          # byte offset within the current run
    d_out = np.zeros(n_eng, np.int64)
    d_wait_slot = np.zeros(n_eng, np.bool_)

    # requests: one 128-byte row each, the fields as column views (a request's fields share
    # two cache lines, not thirteen: the loop touches thousands of requests in flight)
    rrow = np.zeros((pool, 16), np.int64)
    r_g = rrow[:, 0]
    r_i = rrow[:, 1]
    r_kind = rrow[:, 2]
    r_stage = rrow[:, 3]
    r_dram = rrow[:, 4]
    r_ch = rrow[:, 5]                          # memory channel of a load or store
    r_bytes = rrow[:, 6]
    r_src_core = rrow[:, 7]
    r_dst_core = rrow[:, 8]
    r_left = rrow[:, 9]                        # multicast: destinations still to write
    r_next = rrow[:, 10]
    r_sram_mask = rrow.view(np.uint64)[:, 11]
    r_dst_mask = rrow.view(np.uint64)[:, 12]
    r_ovf = rrow[:, 13]                        # next request waiting for the same channel
    for j in range(pool):
        r_next[j] = j + 1
    r_next[pool - 1] = -1

    # packets (a multicast response forks a short-lived copy at each destination): one
    # 64-byte row each, as above
    ppool = 4 * pool + 16
    prow = np.zeros((ppool, 8), np.int64)
    p_dst = prow[:, 0]
    p_flits = prow[:, 1]
    p_bytes = prow[:, 2]                       # bytes the packet carries (energy)
    p_node = prow[:, 3]
    p_req = prow[:, 4]
    p_mc = prow[:, 5]                          # multicast: index of the destination it heads to
    p_next = prow[:, 6]
    for j in range(ppool):
        p_mc[j] = -1
        p_next[j] = j + 1
    p_next[ppool - 1] = -1
    link_free = np.zeros(n_links + 2 * n_nodes, np.int64)
    link_flits = np.zeros(n_links + 2 * n_nodes, np.int64)

    # SRAM streams
    spool = 2 * pool + 2 * n_eng + 16
    st_core = np.zeros(spool, np.int64)
    st_next = np.arange(1, spool + 1, dtype=np.int64)
    st_next[spool - 1] = -1
    st = (st_core, st_next, np.zeros(spool), np.zeros(spool), np.zeros(spool),
          np.zeros(spool, np.int64), np.zeros(spool, np.uint64), np.zeros(spool, np.int64),
          np.zeros(spool, np.int64), np.zeros(1, np.int64))
    c_head = np.full(n_cores, -1, np.int64)
    scratch = np.zeros(3 * max(n_banks, 1) + 8)
    sram_rd = np.zeros(n_cores, np.int64)
    sram_wr = np.zeros(n_cores, np.int64)
    # one queued EV_STREAM per core (its earliest live stream): see _core_event
    st_fin = np.zeros(spool, np.int64)
    st_seq = np.zeros(spool, np.int64)
    st_live = np.zeros(spool, np.bool_)
    c_ver = np.zeros(n_cores, np.int64)
    c_sel = np.full(n_cores, -1, np.int64)
    ev_count = np.zeros(16, np.int64)   # events popped per kind (diagnostics)

    # memory channels
    ch_next = np.full(max(n_ch, 1), INF, np.int64)    # DRAM cycle of next service
    ch_evt = np.full(max(n_ch, 1), INF, np.int64)     # core time of the scheduled event
    # requests waiting for a slot in their channel's queue: a FIFO per channel, linked
    # through r_ovf (head, tail and length per channel)
    ovf_h = np.full(max(n_ch, 1), -1, np.int64)
    ovf_t = np.full(max(n_ch, 1), -1, np.int64)
    ovf_n = np.zeros(max(n_ch, 1), np.int64)
    req_count = np.zeros(4, np.int64)
    dram_bytes = np.zeros(2, np.int64)                # read, write

    inp = (instrs, i_eng, q_start, q_end, eng_kind, eng_core, dur_a, dur_b, s_read, s_write,
           s_mask, elem_bits, prm, core_node, next_link, link_dst, ch_node)
    ins = (t_issue, t_start, t_end, i_pending, i_issued_all)
    eng = (pc, state, w_next, sem_head, sem_cnt, m_ldw_busy, m_accept_end, m_stream_busy,
           m_mm_inflight, d_instr, d_idx, d_off, d_out, d_wait_slot)
    rq = (r_g, r_i, r_kind, r_stage, r_dram, r_ch, r_bytes, r_src_core, r_dst_core, r_sram_mask,
          r_dst_mask, r_left, r_next, r_ovf)
    pk = (p_dst, p_flits, p_bytes, p_node, p_req, p_mc, p_next, link_free, link_flits)
    sr = (st, c_head, scratch, sram_rd, sram_wr, st_fin, st_seq, st_live, c_ver, c_sel)
    mc = (ch_next, ch_evt, ovf_h, ovf_t, ovf_n, req_count, dram_bytes)
    reg = np.zeros(8, np.int64)       # the loop's registers (_chip_loop)
    reg[7] = -1                       # no instruction to blame
    # the most one event can push: a wake-up and a stream per engine, a channel's queue
    margin = 2 * n_eng + dram_T.rq_cap + dram_T.wq_cap + 64
    h = heap_new(4096 + margin)
    cq = cal_new(11, 2 * pool + 4 * n_eng + 1024)   # 2,048 cycles ahead
    for g in range(n_eng):
        ev_push(h, cq, 0, EV_TRY + 16 * g)
    while _chip_loop(h, cq, reg, margin, inp, ins, eng, rq, pk, sr, mc, ev_count, n_links,
                     n_nodes, cap, dram_T, dram_S, max_events):
        h = heap_grow(h)
    t, err, err_instr, byte_hops, t_stale = reg[0], reg[6], reg[7], reg[4], reg[5]
    if err == ERR_NONE and t_stale > t:
        # every per-stream finish event used to be queued and popped, stale or not
        t = t_stale
    return (t_issue, t_start, t_end, link_flits, sram_rd, sram_wr, req_count, dram_bytes, t,
            err, err_instr, sem_cnt, ev_count, byte_hops)


@njit(cache=True, _nrt=False)
def _chip_loop(h, cq, reg, margin, inp, ins, eng, rq, pk, sr, mc, ev_count, n_links, n_nodes,
               cap, dram_T, dram_S, max_events):
    """The event loop of ``chip_run`` over the state it allocated (tuples of arrays, in the
    order built there; events in calendar ``cq`` and heap ``h``). Runs until no event is left
    or an error, then returns False; returns True, with every register saved, when the heap
    has fewer than ``margin`` free slots (the most one event can push, should the calendar be
    full): the caller grows it and calls again.

    ``reg`` (int64) carries the registers between calls: 0 time (core cycles), 1 events
    handled, 2 first free request, 3 first free packet, 4 byte-hops, 5 latest stream finish
    computed, 6 error code, 7 the instruction it names."""
    (instrs, i_eng, q_start, q_end, eng_kind, eng_core, dur_a, dur_b, s_read, s_write,
     s_mask, elem_bits, prm, core_node, next_link, link_dst, ch_node) = inp
    t_issue, t_start, t_end, i_pending, i_issued_all = ins
    (pc, state, w_next, sem_head, sem_cnt, m_ldw_busy, m_accept_end, m_stream_busy,
     m_mm_inflight, d_instr, d_idx, d_off, d_out, d_wait_slot) = eng
    (r_g, r_i, r_kind, r_stage, r_dram, r_ch, r_bytes, r_src_core, r_dst_core, r_sram_mask,
     r_dst_mask, r_left, r_next, r_ovf) = rq
    p_dst, p_flits, p_bytes, p_node, p_req, p_mc, p_next, link_free, link_flits = pk
    st, c_head, scratch, sram_rd, sram_wr, st_fin, st_seq, st_live, c_ver, c_sel = sr
    st_next, st_rem, st_owner = st[1], st[2], st[8]
    ch_next, ch_evt, ovf_h, ovf_t, ovf_n, req_count, dram_bytes = mc
    n_cores = core_node.shape[0]
    max_out = prm[1]
    req_bytes = prm[2]
    flit_bytes = prm[3]
    db = prm[4] != 0
    n_banks = prm[5]
    sram_size = prm[6]
    dram_cap = prm[7]
    router_cycles = prm[8]
    link_cycles = prm[9]
    inject_cycles = prm[10]
    core_fs = prm[11]
    dram_fs = prm[12]
    has_dram = prm[13] > 0
    dataflow = prm[16]             # 0 ws, 1 os, 2 is
    n_rows = prm[17]
    pool = prm[18]
    chunk = prm[19]

    t = reg[0]
    events = reg[1]
    r_free = reg[2]
    p_free = reg[3]
    byte_hops = reg[4]        # sum over router-to-router links of p_bytes
    t_stale = reg[5]          # latest finish time computed: the old per-stream events' end
    err = reg[6]
    err_instr = reg[7]
    grow = False
    while h[0] > 0 or cq[0] > 0:
        if 3 * (h[0] + margin) + 2 > h.shape[0]:
            grow = True
            break
        events += 1
        if events > max_events:
            err = ERR_EVENTS
            break
        t, payload = ev_pop(h, cq)
        kind = payload & 15
        obj = payload >> 4
        ev_count[kind] += 1

        if kind == EV_STREAM:
            core = obj & 0xFFFFFFF
            ver = obj >> 28
            if c_ver[core] != ver:
                ev_count[8] += 1
                continue
            s = c_sel[core]
            st_live[s] = False
            sram_settle(core, t, c_head, st)
            if st_rem[s] > 1e-6:
                # not done at its computed finish: it waits for the next re-balance
                _core_event(h, cq, core, c_head, st_next, st_fin, st_seq, st_live, c_ver, c_sel)
                continue
            owner = st_owner[s]
            sram_remove(core, s, c_head, st)
            # re-balance the remaining streams of this core
            if c_head[core] >= 0:
                tmx = _rebalance(h, cq, core, t, c_head, st, n_banks, cap, scratch, st_fin, st_seq,
                                 st_live, c_ver, c_sel)
                if tmx > t_stale:
                    t_stale = tmx
            if owner >= 0:
                # an instruction stream: owner = instruction index
                i = owner
                g = i_eng[i]
                ek = eng_kind[g]
                if ek == 0:
                    if instrs[i].op == 20:        # LDW: weights are in
                        m_ldw_busy[g] = False
                    else:                         # MM: streaming over, drain remains
                        m_stream_busy[g] = False
                        m_accept_end[g] = t
                        ev_push(h, cq, t + dur_b[i], EV_DONE + 16 * i)
                        if state[g] == ENG_WAIT_RES:
                            state[g] = ENG_IDLE
                            ev_push(h, cq, t, EV_TRY + 16 * g)
                        continue
                else:
                    ev_push(h, cq, t + dur_b[i], EV_DONE + 16 * i)
                    continue
                # LDW finished
                t_end[i] = t
                _signal(h, cq, instrs[i].signal_sem, t, sem_cnt, sem_head, w_next, state)
                if state[g] == ENG_WAIT_RES:
                    state[g] = ENG_IDLE
                    ev_push(h, cq, t, EV_TRY + 16 * g)
                continue
            # a request stream: owner = -(request + 1)
            r = -owner - 1
            kind = EV_REQ
            obj = r
            # fall through to request advance below

        if kind == EV_TRY:
            g = obj
            if state[g] != ENG_IDLE:
                continue
            progressed = True
            while progressed:
                progressed = False
                i = pc[g]
                if i >= q_end[g]:
                    state[g] = ENG_DONE
                    break
                if t_issue[i] < 0:
                    t_issue[i] = t
                blocked = -1
                for k in range(2):
                    sm = instrs[i].wait_sem[k]
                    if sm >= 0 and sem_cnt[sm] < instrs[i].wait_count[k]:
                        blocked = sm
                        break
                if blocked >= 0:
                    state[g] = ENG_WAIT_SEM
                    w_next[g] = sem_head[blocked]
                    sem_head[blocked] = g
                    break
                op = instrs[i].op
                ek = eng_kind[g]
                core = eng_core[g]
                if op == 0 or op == 1:            # NOP / HALT: done at once
                    t_start[i] = t
                    t_end[i] = t
                    _signal(h, cq, instrs[i].signal_sem, t, sem_cnt, sem_head, w_next, state)
                    if op == 1:
                        for j in range(i + 1, q_end[g]):
                            t_issue[j] = t
                            t_start[j] = t
                            t_end[j] = t
                        pc[g] = q_end[g]
                    else:
                        pc[g] = i + 1
                    progressed = True
                    continue
                if ek == 0:                       # matrix engine
                    if op == 20:                  # LDW
                        # the previous tile must be in; exposed: the array must be empty
                        if m_ldw_busy[g] or (not db and m_mm_inflight[g] > 0):
                            state[g] = ENG_WAIT_RES
                            break
                        m_ldw_busy[g] = True
                    else:                         # MM
                        if m_ldw_busy[g] or m_stream_busy[g] or \
                                (dataflow == 1 and not db and m_mm_inflight[g] > 0):
                            state[g] = ENG_WAIT_RES
                            break
                        if dataflow == 1 and db:
                            # os, overlapped: end at least R cycles after the previous end
                            earliest = m_accept_end[g] + n_rows - dur_a[i]
                            if earliest > t:
                                ev_push(h, cq, earliest, EV_TRY + 16 * g)
                                break
                        m_stream_busy[g] = True
                        m_mm_inflight[g] += 1
                if ek <= 1:                       # matrix, or vector (one VOP at a time)
                    t_start[i] = t
                    nb = s_read[i] + s_write[i]
                    sram_rd[core] += s_read[i]
                    sram_wr[core] += s_write[i]
                    ok, tmx = _open_stream(h, cq, core, t, float(nb), nb / max(dur_a[i], 1),
                                           s_mask[i], i, c_head, st, n_banks, cap, scratch,
                                           st_fin, st_seq, st_live, c_ver, c_sel)
                    if not ok:
                        err = ERR_POOL
                        err_instr = i
                        break
                    if tmx > t_stale:
                        t_stale = tmx
                    pc[g] = i + 1
                    if ek == 0:                   # the array pipelines: try the next one now
                        progressed = True
                        continue
                    state[g] = ENG_BUSY
                    break
                # DMA engine: start issuing this instruction's requests
                t_start[i] = t
                d_instr[g] = i
                for k in range(4):
                    d_idx[g, k] = 0
                d_off[g] = 0
                state[g] = ENG_BUSY
                ev_push(h, cq, t, EV_DMA + 16 * g)
                break
            if err != ERR_NONE:
                break
            continue

        if kind == EV_DONE:
            i = obj
            g = i_eng[i]
            t_end[i] = t
            _signal(h, cq, instrs[i].signal_sem, t, sem_cnt, sem_head, w_next, state)
            if eng_kind[g] == 0:
                m_mm_inflight[g] -= 1
                if state[g] == ENG_WAIT_RES:
                    state[g] = ENG_IDLE
                    ev_push(h, cq, t, EV_TRY + 16 * g)
            else:
                state[g] = ENG_IDLE
                ev_push(h, cq, t, EV_TRY + 16 * g)
            continue

        if kind == EV_DMA:
            g = obj
            i = d_instr[g]
            if i < 0:
                continue
            if d_out[g] >= max_out:
                d_wait_slot[g] = True
                continue
            if r_free < 0:
                err = ERR_POOL
                err_instr = i
                break
            # --- the next request of the descriptor ---
            core = eng_core[g]
            op = instrs[i].op
            ebits = elem_bits[instrs[i].dtype]
            sh0 = max(np.int64(instrs[i].shape[0]), np.int64(1))
            sh1 = max(np.int64(instrs[i].shape[1]), np.int64(1))
            sh2 = max(np.int64(instrs[i].shape[2]), np.int64(1))
            sh3 = max(np.int64(instrs[i].shape[3]), np.int64(1))
            contig = (instrs[i].src_stride[3] * 8 == ebits and
                      instrs[i].dst_stride[3] * 8 == ebits) or sh3 == 1
            if contig:
                run = (sh3 * ebits + 7) // 8
                e = 0
            else:
                run = max(ebits // 8, 1)
                e = d_idx[g, 3]
            src = (instrs[i].src_addr + d_idx[g, 0] * instrs[i].src_stride[0]
                   + d_idx[g, 1] * instrs[i].src_stride[1] + d_idx[g, 2] * instrs[i].src_stride[2]
                   + e * instrs[i].src_stride[3] + d_off[g])
            dst = (instrs[i].dst_addr + d_idx[g, 0] * instrs[i].dst_stride[0]
                   + d_idx[g, 1] * instrs[i].dst_stride[1] + d_idx[g, 2] * instrs[i].dst_stride[2]
                   + e * instrs[i].dst_stride[3] + d_off[g])
            # requests stay inside one aligned request_bytes block of the far side
            far = src if op == 10 else dst
            nb = min(run - d_off[g], req_bytes - far % req_bytes)
            if op != 12:
                nb = min(nb, chunk - far % chunk)
            sram_a = dst if op == 10 else src
            if sram_a < 0 or sram_a + nb > sram_size:
                err = ERR_SRAM_RANGE
                err_instr = i
                break
            mcast = op == 10 and instrs[i].dst_core >= 0
            n_dst = max(np.int64(instrs[i].mc_count), np.int64(1)) if mcast else np.int64(1)
            if op == 12:
                if dst < 0 or dst + nb > sram_size:
                    err = ERR_SRAM_RANGE
                    err_instr = i
                    break
                if instrs[i].dst_core < 0 or instrs[i].dst_core >= n_cores:
                    err = ERR_CORE
                    err_instr = i
                    break
            elif far < 0 or far + nb > dram_cap or not has_dram:
                err = ERR_DRAM_RANGE
                err_instr = i
                break
            if mcast and (instrs[i].dst_core + (n_dst - 1) * instrs[i].mc_stride >= n_cores
                          or (n_dst > 1 and instrs[i].mc_stride < 1)):
                err = ERR_CORE
                err_instr = i
                break
            r = r_free
            r_free = r_next[r]
            r_g[r] = g
            r_i[r] = i
            r_bytes[r] = nb
            r_src_core[r] = core
            r_stage[r] = 0
            if mcast:
                r_kind[r] = RQ_MCAST
                r_dram[r] = src
                r_ch[r] = dram_channel(dram_T, src)
                r_dst_core[r] = instrs[i].dst_core
                r_left[r] = n_dst
            elif op == 10:
                r_kind[r] = RQ_LOAD
                r_dram[r] = src
                r_ch[r] = dram_channel(dram_T, src)
                r_dst_core[r] = core
            elif op == 11:
                r_kind[r] = RQ_STORE
                r_dram[r] = dst
                r_ch[r] = dram_channel(dram_T, dst)
                r_dst_core[r] = core
            else:
                r_kind[r] = RQ_COPY
                r_dram[r] = dst                   # destination SRAM address
                r_dst_core[r] = instrs[i].dst_core
            r_sram_mask[r] = _range_mask(sram_a, nb, prm[15], n_banks)
            r_dst_mask[r] = _range_mask(dst, nb, prm[15], n_banks)
            req_count[r_kind[r]] += 1
            i_pending[i] += 1
            d_out[g] += 1
            # advance the descriptor iterator
            d_off[g] += nb
            finished = False
            if d_off[g] >= run:
                d_off[g] = 0
                if not contig:
                    d_idx[g, 3] += 1
                    if d_idx[g, 3] >= sh3:
                        d_idx[g, 3] = 0
                        d_idx[g, 2] += 1
                else:
                    d_idx[g, 2] += 1
                if d_idx[g, 2] >= sh2:
                    d_idx[g, 2] = 0
                    d_idx[g, 1] += 1
                    if d_idx[g, 1] >= sh1:
                        d_idx[g, 1] = 0
                        d_idx[g, 0] += 1
                        if d_idx[g, 0] >= sh0:
                            finished = True
            if finished:
                i_issued_all[i] = True
                d_instr[g] = -1
                pc[g] = i + 1
                state[g] = ENG_IDLE
                ev_push(h, cq, t + 1, EV_TRY + 16 * g)
            else:
                ev_push(h, cq, t + 1, EV_DMA + 16 * g)
            # start the request now: it becomes an EV_REQ at stage 0
            kind = EV_REQ
            obj = r

        if kind == EV_HOP:
            p = obj
            nn, tt = noc_hop(link_free, link_flits, next_link, link_dst, n_links, n_nodes,
                             p_node[p], p_dst[p], t, p_flits[p], router_cycles, link_cycles)
            if nn < 0 and p_mc[p] >= 0:
                # a multicast response at its destination j: the router ejects a copy (it is
                # written at tt) and forwards the packet to destination j + 1 at once
                r = p_req[p]
                i = r_i[r]
                j = p_mc[p]
                core_j = r_dst_core[r] + j * instrs[i].mc_stride
                if j + 1 < max(np.int64(instrs[i].mc_count), np.int64(1)):
                    if p_free < 0:
                        err = ERR_POOL
                        err_instr = i
                        break
                    q = p_free
                    p_free = p_next[q]
                    p_req[q] = r
                    p_node[q] = core_j
                    p_mc[q] = MC_DELIVER
                    ev_push(h, cq, tt, EV_ARRIVE + 16 * q)
                    p_mc[p] = j + 1
                    p_dst[p] = core_node[core_j + instrs[i].mc_stride]
                    ev_push(h, cq, t, EV_HOP + 16 * p)
                else:
                    p_node[p] = core_j
                    p_mc[p] = MC_DELIVER
                    ev_push(h, cq, tt, EV_ARRIVE + 16 * p)
                continue
            if nn < 0:
                pl = EV_ARRIVE + 16 * p
            else:
                p_node[p] = nn
                byte_hops += p_bytes[p]
                pl = EV_HOP + 16 * p
            ev_push(h, cq, tt, pl)
            continue

        if kind == EV_ARRIVE:
            p = obj
            r = p_req[p]
            p_next[p] = p_free
            p_free = p
            if p_mc[p] == MC_DELIVER:
                # a multicast copy is in: write it into that core's SRAM (EV_REQ when done)
                p_mc[p] = -1
                core_j = p_node[p]
                sram_wr[core_j] += r_bytes[r]
                ok, tmx = _open_stream(h, cq, core_j, t, float(r_bytes[r]), float(flit_bytes),
                                       r_dst_mask[r], -(r + 1), c_head, st, n_banks, cap,
                                       scratch, st_fin, st_seq, st_live, c_ver, c_sel)
                if not ok:
                    err = ERR_POOL
                    err_instr = r_i[r]
                    break
                if tmx > t_stale:
                    t_stale = tmx
                continue
            kind = EV_REQ
            obj = r

        if kind == EV_DRAM:
            ch = obj
            if ch_evt[ch] != t:
                ev_count[9] += 1
                continue
            ch_evt[ch] = INF
            d_now = t * core_fs // dram_fs
            while ch_next[ch] <= d_now:
                ch_next[ch] = dram_service(dram_T, dram_S, ch, ch_next[ch])
            while True:
                r = dram_pop_done(dram_S)
                if r < 0:
                    break
                tc = _ceil_div(dram_completion(dram_S, r) * dram_fs, core_fs)
                ev_push(h, cq, max(tc, t), EV_REQ + 16 * r)
            while ovf_n[ch] > 0:
                r = ovf_h[ch]
                if not dram_enqueue(dram_T, dram_S, r, r_dram[r], r_bytes[r],
                                    r_kind[r] == RQ_STORE, d_now + 1):
                    break
                ovf_h[ch] = r_ovf[r]
                ovf_n[ch] -= 1
                ch_next[ch] = min(ch_next[ch], d_now + 1)
            if ch_next[ch] < INF:
                tc = _ceil_div(ch_next[ch] * dram_fs, core_fs)
                if tc <= t:
                    tc = t + 1
                ch_evt[ch] = tc
                ev_push(h, cq, tc, EV_DRAM + 16 * ch)
            continue

        if kind == EV_REQ:
            # advance request r by one stage at time t
            r = obj
            rk = r_kind[r]
            stg = r_stage[r]
            r_stage[r] = stg + 1
            send_from = -1
            send_to = -1
            flits = 1
            pbytes = NOC_CTRL_BYTES               # a request or an acknowledgement
            to_dram = False
            stream_core = -1
            stream_mask = np.uint64(0)
            done = False
            mc_first = -1
            if rk == RQ_MCAST:
                if stg == 0:      # request packet to the memory controller
                    send_from, send_to = core_node[r_src_core[r]], ch_node[r_ch[r]]
                elif stg == 1:
                    to_dram = True
                elif stg == 2:    # data read: the response heads for the first destination
                    send_from, send_to = ch_node[r_ch[r]], core_node[r_dst_core[r]]
                    flits = (r_bytes[r] + flit_bytes - 1) // flit_bytes
                    pbytes = r_bytes[r]
                    mc_first = 0
                else:             # one destination has written its copy (EV_ARRIVE)
                    r_left[r] -= 1
                    done = r_left[r] == 0
            elif rk == RQ_LOAD:
                if stg == 0:      # request packet to the memory controller
                    ch = r_ch[r]
                    send_from, send_to = core_node[r_src_core[r]], ch_node[ch]
                elif stg == 1:    # at the controller: into the channel's queue
                    to_dram = True
                elif stg == 2:    # data read: response packet back to the core
                    ch = r_ch[r]
                    send_from, send_to = ch_node[ch], core_node[r_src_core[r]]
                    flits = (r_bytes[r] + flit_bytes - 1) // flit_bytes
                    pbytes = r_bytes[r]
                elif stg == 3:    # data at the core: write it into SRAM
                    stream_core = r_src_core[r]
                    stream_mask = r_sram_mask[r]
                    sram_wr[stream_core] += r_bytes[r]
                else:
                    done = True
            elif rk == RQ_STORE:
                if stg == 0:      # read the data out of SRAM
                    stream_core = r_src_core[r]
                    stream_mask = r_sram_mask[r]
                    sram_rd[stream_core] += r_bytes[r]
                elif stg == 1:    # data packet to the memory controller
                    ch = r_ch[r]
                    send_from, send_to = core_node[r_src_core[r]], ch_node[ch]
                    flits = (r_bytes[r] + flit_bytes - 1) // flit_bytes
                    pbytes = r_bytes[r]
                elif stg == 2:
                    to_dram = True
                elif stg == 3:    # written: acknowledge to the core
                    ch = r_ch[r]
                    send_from, send_to = ch_node[ch], core_node[r_src_core[r]]
                else:
                    done = True
            else:
                if stg == 0:      # read from the source SRAM
                    stream_core = r_src_core[r]
                    stream_mask = r_sram_mask[r]
                    sram_rd[stream_core] += r_bytes[r]
                elif stg == 1:    # data packet to the destination core
                    send_from, send_to = core_node[r_src_core[r]], core_node[r_dst_core[r]]
                    flits = (r_bytes[r] + flit_bytes - 1) // flit_bytes
                    pbytes = r_bytes[r]
                elif stg == 2:    # write into the destination SRAM
                    stream_core = r_dst_core[r]
                    stream_mask = r_dst_mask[r]
                    sram_wr[stream_core] += r_bytes[r]
                elif stg == 3:    # acknowledge to the source
                    send_from, send_to = core_node[r_dst_core[r]], core_node[r_src_core[r]]
                else:
                    done = True
            if send_from >= 0:
                if p_free < 0:
                    err = ERR_POOL
                    err_instr = r_i[r]
                    break
                p = p_free
                p_free = p_next[p]
                p_dst[p] = send_to
                p_flits[p] = flits
                p_bytes[p] = pbytes
                p_node[p] = send_from
                p_req[p] = r
                p_mc[p] = mc_first
                link_flits[n_links + send_from] += flits
                th = noc_inject(link_free, n_links, send_from, t, flits, inject_cycles)
                ev_push(h, cq, th, EV_HOP + 16 * p)
            elif stream_core >= 0:
                ok, tmx = _open_stream(h, cq, stream_core, t, float(r_bytes[r]), float(flit_bytes),
                                       stream_mask, -(r + 1), c_head, st, n_banks, cap,
                                       scratch, st_fin, st_seq, st_live, c_ver, c_sel)
                if not ok:
                    err = ERR_POOL
                    err_instr = r_i[r]
                    break
                if tmx > t_stale:
                    t_stale = tmx
            elif to_dram:
                ch = r_ch[r]
                dram_bytes[1 if rk == RQ_STORE else 0] += r_bytes[r]
                d_arr = _ceil_div(t * core_fs, dram_fs)
                if ovf_n[ch] > 0 or not dram_enqueue(dram_T, dram_S, r, r_dram[r], r_bytes[r],
                                                     rk == RQ_STORE, d_arr):
                    r_ovf[r] = -1
                    if ovf_n[ch] > 0:
                        r_ovf[ovf_t[ch]] = r
                    else:
                        ovf_h[ch] = r
                    ovf_t[ch] = r
                    ovf_n[ch] += 1
                if d_arr < ch_next[ch]:
                    ch_next[ch] = d_arr
                tc = _ceil_div(ch_next[ch] * dram_fs, core_fs)
                if tc < t:
                    tc = t
                if tc < ch_evt[ch]:
                    ch_evt[ch] = tc
                    ev_push(h, cq, tc, EV_DRAM + 16 * ch)
            elif done:
                g = r_g[r]
                i = r_i[r]
                r_next[r] = r_free
                r_free = r
                i_pending[i] -= 1
                d_out[g] -= 1
                if i_pending[i] == 0 and i_issued_all[i]:
                    t_end[i] = t
                    _signal(h, cq, instrs[i].signal_sem, t, sem_cnt, sem_head, w_next, state)
                if d_wait_slot[g]:
                    d_wait_slot[g] = False
                    ev_push(h, cq, t, EV_DMA + 16 * g)
            continue
    reg[0] = t
    reg[1] = events
    reg[2] = r_free
    reg[3] = p_free
    reg[4] = byte_hops
    reg[5] = t_stale
    reg[6] = err
    reg[7] = err_instr
    return grow



@njit(cache=True, _nrt=False)
def _range_mask(addr, nbytes, width, n_banks):
    """Bank mask of the byte range [addr, addr + nbytes) (64-bit, banks grouped above 64)."""
    m = np.uint64(0)
    first = addr // width
    last = (addr + max(nbytes, 1) - 1) // width
    n = min(last - first + 1, n_banks)
    for j in range(n):
        b = (first + j) % n_banks
        if n_banks > 64:
            b = b * 64 // n_banks
        m |= np.uint64(1) << np.uint64(b)
    return m
