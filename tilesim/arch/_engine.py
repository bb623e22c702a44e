"""The numba engine: every jitted function the chip's event loop calls, in one module.

numba's on-disk cache does not notice edits to jitted functions imported from another file
(numba#1833), so the event loop and everything it calls live here, one section per component.
The component modules (noc.py, dram/, sram.py, dma.py, chip.py) hold the Python side: builders
that turn configs into arrays, closed forms, traces. Nothing here reads a module global: every
parameter arrives as an argument.

Sections: event queue | NoC | (DRAM) | chip event loop.
"""
from __future__ import annotations

import numpy as np
from numba import njit

INF = np.int64(2**62)

# ============================================================================================
# Event queue: a binary min-heap of (time, seq) keys with an int64 payload.
# Same-time events pop in the order they were pushed (seq), so runs are deterministic.
# ============================================================================================


@njit(cache=True)
def heap_new(capacity):
    """Arrays of an empty heap: (time, seq, payload, [size, next_seq])."""
    return (np.empty(capacity, np.int64), np.empty(capacity, np.int64),
            np.empty(capacity, np.int64), np.zeros(2, np.int64))


@njit(cache=True)
def heap_grow(h):
    t, s, p, meta = h
    n = t.shape[0] * 2
    t2, s2, p2 = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    t2[:t.shape[0]] = t
    s2[:t.shape[0]] = s
    p2[:t.shape[0]] = p
    return (t2, s2, p2, meta)


@njit(cache=True)
def heap_push(h, time, payload):
    """Push; returns the heap (a new one when it had to grow)."""
    if h[3][0] == h[0].shape[0]:
        h = heap_grow(h)
    t, s, p, meta = h
    i = meta[0]
    meta[0] += 1
    seq = meta[1]
    meta[1] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if t[parent] < time or (t[parent] == time and s[parent] < seq):
            break
        t[i], s[i], p[i] = t[parent], s[parent], p[parent]
        i = parent
    t[i], s[i], p[i] = time, seq, payload
    return h


@njit(cache=True)
def heap_pop(h):
    """Remove the earliest event; returns (time, payload). The heap must not be empty."""
    t, s, p, meta = h
    top_t, top_p = t[0], p[0]
    meta[0] -= 1
    n = meta[0]
    if n > 0:
        lt, ls, lp = t[n], s[n], p[n]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and (t[c + 1] < t[c] or (t[c + 1] == t[c] and s[c + 1] < s[c])):
                c += 1
            if lt < t[c] or (lt == t[c] and ls < s[c]):
                break
            t[i], s[i], p[i] = t[c], s[c], p[c]
            i = c
        t[i], s[i], p[i] = lt, ls, lp
    return top_t, top_p


# ============================================================================================
# NoC: packets move head-first router to router; every link is a FCFS server (noc.py).
# A packet's head reaching router `node` at time t is one event; the caller routes it.
# ============================================================================================


@njit(cache=True)
def noc_inject(link_free, n_links, node, now, flits, inject_cycles):
    """Put a packet of ``flits`` on ``node``'s injection link at ``now``; returns the time its
    head reaches the node's router."""
    link = n_links + node
    depart = max(now, link_free[link])
    link_free[link] = depart + flits
    return depart + inject_cycles


@njit(cache=True)
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
    while nxt < n or h[3][0] > 0:
        if nxt < n and (h[3][0] == 0 or t_create[nxt] <= h[0][0]):
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
