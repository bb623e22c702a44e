"""The chip loop's event queue (_engine: calendar ring + heap) pops in exactly the (time, seq)
order of one heap, and the loop runs without reference counting."""
from __future__ import annotations

import heapq

import numpy as np
from numba import njit

from tilesim.arch import _engine as E


@njit(cache=True)
def _drive(ops, log2_width, slots):
    """Replay ``ops`` (rows: 0 push at now + delay, 1 push with a sequence number reserved
    earlier (ev_push_seq, as _core_event does), 2 reserve one, 3 pop) through a calendar of
    ``2**log2_width`` buckets and ``slots`` slots and a heap; returns the popped (time,
    payload) rows."""
    h = E.heap_new(ops.shape[0] + 8)
    c = E.cal_new(log2_width, slots)
    out = np.full((ops.shape[0], 2), -1, np.int64)
    reserved = np.empty(ops.shape[0], np.int64)
    n_res = 0
    n_out = 0
    for k in range(ops.shape[0]):
        op, delay, payload = ops[k, 0], ops[k, 1], ops[k, 2]
        if op == 0:
            E.ev_push(h, c, c[2] + delay, payload)
        elif op == 1 and n_res > 0:
            n_res -= 1
            E.ev_push_seq(h, c, c[2] + delay, reserved[n_res], payload)
        elif op == 2:
            reserved[n_res] = h[1]
            h[1] += 1
            n_res += 1
        elif op == 3 and h[0] + c[0] > 0:
            out[n_out, 0], out[n_out, 1] = E.ev_pop(h, c)
            n_out += 1
    while h[0] + c[0] > 0:
        out[n_out, 0], out[n_out, 1] = E.ev_pop(h, c)
        n_out += 1
    return out[:n_out]


def _reference(ops):
    """The same replay on one heap of (time, seq, payload)."""
    heap, out, reserved, seq, now = [], [], [], 0, 0
    for op, delay, payload in ops.tolist():
        if op == 0:
            heapq.heappush(heap, (now + delay, seq, payload))
            seq += 1
        elif op == 1 and reserved:
            heapq.heappush(heap, (now + delay, reserved.pop(), payload))
        elif op == 2:
            reserved.append(seq)
            seq += 1
        elif op == 3 and heap:
            now, _, p = heapq.heappop(heap)
            out.append((now, p))
    while heap:
        now, _, p = heapq.heappop(heap)
        out.append((now, p))
    return out


def test_calendar_and_heap_pop_in_heap_order():
    """Ties, delays past the ring's width, a full ring (events spill to the heap) and events
    pushed with a sequence number taken earlier, all against heapq."""
    rng = np.random.default_rng(0)
    for log2_width, slots in ((6, 3), (6, 64), (11, 4096)):
        n = 20000
        ops = np.stack([rng.choice(4, n, p=[0.45, 0.05, 0.05, 0.45]),
                        np.where(rng.random(n) < 0.1, rng.integers(0, 300, n),
                                 rng.integers(0, 4, n)),
                        np.arange(n)], axis=1).astype(np.int64)
        got = [tuple(r) for r in _drive(ops, log2_width, slots).tolist()]
        assert got == _reference(ops), (log2_width, slots)


def test_chip_loop_runs_without_reference_counting():
    """_engine.chip_run's loop and what it calls are compiled with ``_nrt=False``: with
    reference counting (atomic increments per array taken out of a tuple) the llama-3-8b layer
    of benchmarks/fingerprint.py ran 2.5x slower. ``_nrt`` is an underscore option of numba,
    so check it stays set."""
    for f in (E._chip_loop, E.ev_push, E.ev_push_seq, E.ev_pop, E.heap_pop, E.heap_put_seq,
              E.noc_hop, E.noc_inject, E._signal, E._open_stream, E._rebalance, E._stream_events,
              E._core_event, E.sram_fill_rates, E.sram_settle, E.sram_remove,
              E.sram_stream_start, E._range_mask, E._ceil_div):
        assert f.targetoptions.get("_nrt") is False, f.py_func.__name__
