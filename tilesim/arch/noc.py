"""Network-on-chip: a networkx topology, routing tables computed once, per-link timing.

Model
-----
Every router has one output link per neighbour plus an ejection link to its node; every node
has an injection link into its router. A link carries one flit (``link_width_bytes``) per
cycle. A packet of L flits that crosses H router-to-router links, with no contention, takes

    latency = inject_cycles + router_cycles * (H + 1) + link_cycles * H + (L - 1)

cycles from creation until its tail is delivered: the network interface costs
``inject_cycles`` once, every router on the route (H + 1 of them, source and destination
included) its pipeline depth, every link its wire delay, and the tail follows the head by
L - 1 cycles. BookSim2's default router (4-stage pipeline, 1-cycle links) is this formula with
router_cycles = 4, link_cycles = 1, inject_cycles = 3: on an 8x8 mesh under uniform random
traffic it predicts 33.25 cycles against BookSim's 33.21 (../shared/reference/noc.md).

Under load, a packet's head reaches a router at time t, waits ``router_cycles``, then takes its
output link at ``max(t + router_cycles, link_free)``; the link is then busy for L cycles
(serialisation). Heads are served in order of arrival at the router (ties: in order of event
creation), which makes every link a first-come-first-served server with an unbounded queue.

Routing: dimension order (x, then y) on mesh and torus (on a torus, the shorter way round each
ring, the positive direction on a tie), shortest path with the lowest-numbered next hop on
every other topology. Nodes are numbered ``y * dims[0] + x`` on a mesh or torus.

Not modelled: virtual channels, credit flow control and back-pressure, adaptive routing. Links
as independent FCFS servers behave like BookSim's many-VC router, which saturates an 8x8 mesh at
about 0.43-0.445 flits/node/cycle with 1-flit packets (noc.md); expect saturation near that, and
earlier than that for a real router with few VCs.
"""
from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import networkx as nx
import numpy as np

from tilesim.config import NocConfig, noc_node_count


@dataclass(frozen=True)
class NocTables:
    """Everything the event loop needs about the NoC, as plain arrays.

    Link ids: ``0 .. n_links-1`` are router-to-router links, then one injection link per node
    (``n_links + node``), then one ejection link per node (``n_links + n_nodes + node``).
    """

    n_nodes: int
    n_links: int               # router-to-router links
    next_link: np.ndarray      # int32[node, dest]: router-to-router link to take, -1 at dest
    hops: np.ndarray           # int32[node, dest]: router-to-router links on the route
    link_src: np.ndarray       # int32[link]
    link_dst: np.ndarray       # int32[link]
    router_cycles: int
    link_cycles: int
    inject_cycles: int
    flit_bytes: int

    @property
    def n_all_links(self) -> int:
        """Router-to-router plus injection plus ejection links."""
        return self.n_links + 2 * self.n_nodes

    def injection_link(self, node: int) -> int:
        return self.n_links + node

    def ejection_link(self, node: int) -> int:
        return self.n_links + self.n_nodes + node

    def route(self, src: int, dst: int) -> list[int]:
        """Router-to-router links from src to dst, in order."""
        links, node = [], src
        while node != dst:
            link = int(self.next_link[node, dst])
            links.append(link)
            node = int(self.link_dst[link])
        return links

    def flits(self, nbytes: int) -> int:
        """Flits in a packet carrying ``nbytes`` of payload (at least one)."""
        return max(1, -(-int(nbytes) // self.flit_bytes))


def topology_graph(cfg: NocConfig) -> nx.DiGraph:
    """mesh | torus | ring | crossbar | explicit edges -> directed graph of links.

    Every physical connection becomes two directed links. Node attribute ``pos`` holds (x, y)
    for drawing.
    """
    n = noc_node_count(cfg)
    g = nx.DiGraph()
    if cfg.topology in ("mesh", "torus"):
        nx_, ny_ = cfg.dims
        for y in range(ny_):
            for x in range(nx_):
                g.add_node(y * nx_ + x, pos=(x, y))
        wrap = cfg.topology == "torus"
        for y in range(ny_):
            for x in range(nx_):
                a = y * nx_ + x
                for dx, dy in ((1, 0), (0, 1)):
                    x2, y2 = x + dx, y + dy
                    if wrap:
                        x2, y2 = x2 % nx_, y2 % ny_
                    if x2 >= nx_ or y2 >= ny_:
                        continue
                    b = y2 * nx_ + x2
                    if a != b:
                        g.add_edge(a, b)
                        g.add_edge(b, a)
    elif cfg.topology == "ring":
        for i in range(n):
            g.add_node(i, pos=(np.cos(2 * np.pi * i / n), np.sin(2 * np.pi * i / n)))
        for i in range(n):
            j = (i + 1) % n
            if i != j:
                g.add_edge(i, j)
                g.add_edge(j, i)
    elif cfg.topology == "crossbar":
        for i in range(n):
            g.add_node(i, pos=(i, 0))
        for i in range(n):
            for j in range(n):
                if i != j:
                    g.add_edge(i, j)
    elif cfg.topology == "edges":
        g.add_nodes_from((i, {"pos": (i, 0)}) for i in range(n))
        for a, b in cfg.edges:
            g.add_edge(a, b)
            g.add_edge(b, a)
    else:  # config validation makes this unreachable
        raise ValueError(f"unknown topology {cfg.topology!r}")
    return g


def _dimension_order_next(cfg: NocConfig, node: int, dest: int) -> int:
    """Next node from ``node`` toward ``dest`` under x-then-y dimension-order routing."""
    nx_, ny_ = cfg.dims
    x, y, dx_, dy_ = node % nx_, node // nx_, dest % nx_, dest // nx_

    def step(a: int, b: int, size: int) -> int:
        if a == b:
            return 0
        if cfg.topology == "torus":
            forward = (b - a) % size
            return 1 if forward <= size - forward else -1
        return 1 if b > a else -1

    sx = step(x, dx_, nx_)
    if sx:
        return y * nx_ + (x + sx) % nx_
    sy = step(y, dy_, ny_)
    return ((y + sy) % ny_) * nx_ + x


@functools.lru_cache(maxsize=16)
def build(cfg: NocConfig) -> NocTables:
    """Build the topology graph, route every pair once, return arrays for the event loop.

    Cached per (frozen, hashable) NoC config: ``tilesim.simulate`` runs several programs on
    one chip, and routing every pair in Python cost 0.06-0.16 s a run. The arrays are
    read-only so a caller cannot change the cached tables."""
    g = topology_graph(cfg)
    n = g.number_of_nodes()
    edges = sorted(g.edges())
    link_of = {e: i for i, e in enumerate(edges)}
    next_link = np.full((n, n), -1, np.int32)
    hops = np.zeros((n, n), np.int32)
    if cfg.topology in ("mesh", "torus"):
        nx_, ny_ = cfg.dims
        for src in range(n):
            for dst in range(n):
                if src != dst:
                    next_link[src, dst] = link_of[(src, _dimension_order_next(cfg, src, dst))]
        # x then y: the hops are the distances along each dimension (the shorter way round a
        # torus ring, which is the way _dimension_order_next steps)
        ids = np.arange(n)
        for size, coord in ((nx_, ids % nx_), (ny_, ids // nx_)):
            d = np.abs(coord[:, None] - coord[None, :])
            hops += np.minimum(d, size - d) if cfg.topology == "torus" else d
    else:
        # BFS from every destination over reversed links; neighbours in id order, so the
        # lowest-numbered next hop wins a tie.
        for dst in range(n):
            dist = {dst: 0}
            frontier = deque([dst])
            while frontier:
                v = frontier.popleft()
                for u in sorted(g.predecessors(v)):
                    if u not in dist:
                        dist[u] = dist[v] + 1
                        frontier.append(u)
            for src in range(n):
                if src == dst:
                    continue
                hops[src, dst] = dist[src]
                best = min(w for w in g.successors(src) if dist.get(w, -1) == dist[src] - 1)
                next_link[src, dst] = link_of[(src, best)]
    link_src = np.array([a for a, _ in edges], np.int32)
    link_dst = np.array([b for _, b in edges], np.int32)
    for a in (next_link, hops, link_src, link_dst):
        a.setflags(write=False)
    return NocTables(
        n_nodes=n, n_links=len(edges), next_link=next_link, hops=hops,
        link_src=link_src, link_dst=link_dst,
        router_cycles=cfg.router_cycles, link_cycles=cfg.link_cycles,
        inject_cycles=cfg.inject_cycles, flit_bytes=cfg.link_width_bytes)


def zero_load_cycles(tables: NocTables, src: int, dst: int, n_flits: int) -> int:
    """The closed form in the module docstring: latency of one packet on an idle network."""
    h = int(tables.hops[src, dst])
    return (tables.inject_cycles + tables.router_cycles * (h + 1) + tables.link_cycles * h
            + (n_flits - 1))


def mean_hops_uniform(tables: NocTables) -> float:
    """Mean router-to-router hops under uniform random traffic, self-traffic included.

    On a k x k mesh this is 2 (k^2 - 1) / (3k) (5.25 for k = 8, as noc.md quotes)."""
    return float(tables.hops.mean())


def bisection_bound(cfg: NocConfig) -> float:
    """Uniform-random saturation bound in flits/node/cycle from the bisection of a k x k mesh
    (4/k) or torus (8/k). Only defined for square meshes and tori."""
    k = cfg.dims[0]
    if cfg.topology not in ("mesh", "torus") or cfg.dims[0] != cfg.dims[1]:
        raise ValueError("bisection bound is given for square meshes and tori only")
    return (4.0 if cfg.topology == "mesh" else 8.0) / k


def deliver(tables: NocTables, src, dst, flits, t_create) -> tuple[np.ndarray, np.ndarray]:
    """Run packets through an otherwise idle NoC in the event loop's NoC model.

    Arguments are equal-length integer arrays, ``t_create`` sorted. Returns (t_done per packet:
    the cycle its tail is delivered; flits per link, all links)."""
    from tilesim.arch._engine import noc_run_traffic

    return noc_run_traffic(np.asarray(src, np.int64), np.asarray(dst, np.int64),
                           np.asarray(flits, np.int64), np.asarray(t_create, np.int64),
                           tables.next_link, tables.link_dst, tables.n_links, tables.n_nodes,
                           tables.router_cycles, tables.link_cycles, tables.inject_cycles)


@dataclass(frozen=True)
class TrafficResult:
    offered: float            # flits/node/cycle injected
    accepted: float           # flits/node/cycle delivered in the measurement window
    latency_mean: float       # cycles, packets created in the window
    latency_p99: float
    packets: int


def uniform_random(tables: NocTables, rate: float, packet_flits: int = 1, cycles: int = 20000,
                   warmup: int = 5000, seed: int = 0) -> TrafficResult:
    """Bernoulli injection of ``rate`` flits/node/cycle to uniform random destinations (self
    included, as BookSim's 'uniform'), measured over ``cycles`` after ``warmup`` cycles.

    Accepted throughput counts flits delivered inside the window; latency is creation to
    tail delivery of packets created inside it (BookSim's packet latency)."""
    rng = np.random.default_rng(seed)
    n, total = tables.n_nodes, warmup + cycles
    fires = rng.random((total, n)) < rate / packet_flits
    t_create, src = np.nonzero(fires)
    dst = rng.integers(0, n, size=src.shape[0])
    flits = np.full(src.shape[0], packet_flits)
    t_done, _ = deliver(tables, src, dst, flits, t_create)
    in_window = t_create >= warmup
    lat = (t_done - t_create)[in_window]
    delivered = ((t_done >= warmup) & (t_done < total)).sum() * packet_flits
    return TrafficResult(offered=float(rate), accepted=float(delivered / (n * cycles)),
                         latency_mean=float(lat.mean()) if lat.size else 0.0,
                         latency_p99=float(np.percentile(lat, 99)) if lat.size else 0.0,
                         packets=int(in_window.sum()))


def saturation_rate(tables: NocTables, packet_flits: int = 1, cycles: int = 20000,
                    seed: int = 0, step: float = 0.01) -> tuple[float, list[TrafficResult]]:
    """Offered load (flits/node/cycle) at which mean latency reaches twice its zero-load value,
    the criterion noc.md reads off BookSim's curve; linear interpolation between steps."""
    results = [uniform_random(tables, step, packet_flits, cycles, seed=seed)]
    t0 = results[0].latency_mean
    rate = step
    while rate < 1.0:
        rate = round(rate + step, 6)
        r = uniform_random(tables, rate, packet_flits, cycles, seed=seed)
        results.append(r)
        if r.latency_mean >= 2 * t0:
            a, b = results[-2], r
            frac = (2 * t0 - a.latency_mean) / (b.latency_mean - a.latency_mean)
            return a.offered + frac * (b.offered - a.offered), results
    return 1.0, results
