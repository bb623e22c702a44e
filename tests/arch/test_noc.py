"""NoC: routes, the zero-load closed form, conservation, and BookSim2's 8x8 mesh."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tilesim.arch import noc
from tilesim.config import NocConfig

DATA = Path(__file__).resolve().parent.parent / "data"

TOPOLOGIES = {
    "mesh4x3": NocConfig(topology="mesh", dims=(4, 3)),
    "torus5x4": NocConfig(topology="torus", dims=(5, 4), router_cycles=9, inject_cycles=5),
    "ring7": NocConfig(topology="ring", nodes=7, link_cycles=2),
    "crossbar5": NocConfig(topology="crossbar", nodes=5),
    "edges": NocConfig(topology="edges", edges=((0, 1), (1, 2), (2, 3), (3, 0), (1, 4)),
                       router_cycles=3),
}


def booksim_mesh():
    return NocConfig(topology="mesh", dims=(8, 8), router_cycles=4, link_cycles=1,
                     inject_cycles=3)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_routes_are_shortest_and_follow_links(name):
    import networkx as nx
    cfg = TOPOLOGIES[name]
    t = noc.build(cfg)
    g = noc.topology_graph(cfg)
    dist = dict(nx.all_pairs_shortest_path_length(g))
    for s in range(t.n_nodes):
        for d in range(t.n_nodes):
            route = t.route(s, d)
            assert len(route) == t.hops[s, d] == dist[s][d]
            node = s
            for link in route:
                assert t.link_src[link] == node
                node = t.link_dst[link]
            assert node == d


def test_mesh_routes_x_first():
    t = noc.build(NocConfig(topology="mesh", dims=(4, 4)))
    route = t.route(0, 15)  # (0,0) -> (3,3)
    nodes = [int(t.link_dst[link]) for link in route]
    assert nodes == [1, 2, 3, 7, 11, 15]


def test_torus_takes_the_short_way_round():
    t = noc.build(NocConfig(topology="torus", dims=(8, 1)))
    assert t.hops[0, 7] == 1 and t.hops[0, 4] == 4 and t.hops[0, 5] == 3


def test_mean_hops_on_a_k_by_k_mesh_is_the_closed_form():
    """2 (k^2 - 1) / (3k): 5.25 on 8x8 (noc.md)."""
    for k in (2, 4, 8):
        t = noc.build(NocConfig(topology="mesh", dims=(k, k)))
        assert noc.mean_hops_uniform(t) == pytest.approx(2 * (k * k - 1) / (3 * k))


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_zero_load_latency_equals_the_closed_form(name):
    """One packet at a time: inject + router (H+1) + link H + (L-1), every pair and size."""
    t = noc.build(TOPOLOGIES[name])
    pairs = [(s, d) for s in range(t.n_nodes) for d in range(t.n_nodes)]
    rng = np.random.default_rng(1)
    flits = rng.integers(1, 9, len(pairs))
    spacing = 1000  # far apart: no two packets meet
    t_create = np.arange(len(pairs)) * spacing
    src = [s for s, _ in pairs]
    dst = [d for _, d in pairs]
    t_done, _ = noc.deliver(t, src, dst, flits, t_create)
    expect = [noc.zero_load_cycles(t, s, d, f) for (s, d), f in zip(pairs, flits)]
    assert np.array_equal(t_done - t_create, expect)


def test_booksim_zero_load_is_33_25_cycles_on_8x8():
    """noc.md: T0 = 3 + 4 (H+1) + H + (L-1), H = 5.25 on average -> 33.25 (BookSim: 33.21)."""
    t = noc.build(booksim_mesh())
    mean = np.mean([noc.zero_load_cycles(t, s, d, 1) for s in range(64) for d in range(64)])
    assert mean == pytest.approx(33.25)


def test_packets_sharing_a_link_serialise():
    """Two L-flit packets on the same route at once: the second tail lands L cycles later."""
    t = noc.build(NocConfig(topology="mesh", dims=(4, 1)))
    L = 5
    t_done, _ = noc.deliver(t, [0, 0], [3, 3], [L, L], [0, 0])
    assert t_done[1] - t_done[0] == L
    assert t_done[0] == noc.zero_load_cycles(t, 0, 3, L)


def test_flits_are_conserved_and_flit_hops_match_routes():
    t = noc.build(NocConfig(topology="torus", dims=(4, 4)))
    rng = np.random.default_rng(7)
    n = 5000
    src, dst = rng.integers(0, 16, n), rng.integers(0, 16, n)
    flits = rng.integers(1, 5, n)
    t_create = np.sort(rng.integers(0, 3000, n))
    t_done, link_flits = noc.deliver(t, src, dst, flits, t_create)
    injected = link_flits[t.n_links:t.n_links + t.n_nodes].sum()
    ejected = link_flits[t.n_links + t.n_nodes:].sum()
    assert injected == ejected == flits.sum()
    assert link_flits[:t.n_links].sum() == (flits * t.hops[src, dst]).sum()
    assert (t_done >= t_create).all()
    lat = t_done - t_create
    zero = np.array([noc.zero_load_cycles(t, s, d, f) for s, d, f in zip(src, dst, flits)])
    assert (lat >= zero).all()


def test_same_traffic_same_cycles():
    t = noc.build(booksim_mesh())
    a = noc.uniform_random(t, 0.3, cycles=2000, warmup=500, seed=3)
    b = noc.uniform_random(t, 0.3, cycles=2000, warmup=500, seed=3)
    assert a == b


def _booksim_rows():
    with open(DATA / "noc_booksim2_mesh8x8.csv") as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    return [r for r in rows if r["topology"] == "mesh" and r["num_vcs"] == "16"
            and r["sim_type"] == "latency" and r["stable"] == "1"]


def test_low_load_latency_matches_booksim():
    """At 1-10% load, mean packet latency within 1 cycle of BookSim2's (noc_booksim2_mesh8x8.csv)."""
    t = noc.build(booksim_mesh())
    for r in _booksim_rows():
        rate, flits = float(r["offered_flits_per_node_cycle"]), int(r["packet_flits"])
        if rate <= 0.1:
            ours = noc.uniform_random(t, rate, flits, cycles=6000, warmup=1000).latency_mean
            assert ours == pytest.approx(float(r["avg_packet_latency_cycles"]), abs=1.0)


@pytest.mark.slow
def test_saturation_near_booksim_many_vc_router():
    """Saturation (mean latency = 2 x zero-load) on 8x8 uniform random, 1-flit packets.

    BookSim2's 16-VC router reaches 2 x T0 at 0.42 flits/node/cycle and accepts at most 0.43-0.445
    (noc_booksim2_mesh8x8.csv); the bisection bound is 4/k = 0.5. tilesim's links are ideal
    FCFS servers without allocator losses, so it must saturate above BookSim's router and at or
    below the bisection bound: measured 0.487 (1-flit) and 0.462 (4-flit) when written."""
    t = noc.build(booksim_mesh())
    bound = noc.bisection_bound(booksim_mesh())
    sat1, _ = noc.saturation_rate(t, packet_flits=1, cycles=10000, step=0.02)
    sat4, _ = noc.saturation_rate(t, packet_flits=4, cycles=10000, step=0.02)
    assert 0.42 <= sat1 <= bound
    assert 0.38 <= sat4 <= sat1
    assert sat1 / 0.43 < 1.16   # within 16% of BookSim's saturation


def test_tables_are_cached_per_config_and_read_only():
    """build() is cached per NoC config (simulate runs several programs on one chip); the
    shared arrays cannot be written."""
    cfg = NocConfig(topology="mesh", dims=(3, 3))
    t = noc.build(cfg)
    assert noc.build(NocConfig(topology="mesh", dims=(3, 3))) is t
    assert noc.build(NocConfig(topology="mesh", dims=(3, 2))) is not t
    with pytest.raises(ValueError):
        t.next_link[0, 1] = 5
