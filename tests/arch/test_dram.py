"""The DRAM model: standards as data, earliest-legal-cycle formulas, the trace checker, results.

Expectations are formulas over the standard's named timings (Ramulator 2.1's device-timing
tests), the standard's own constraint rows replayed by checker.py, or published figures in
../shared/reference/dram_standards.md and energy_cost_chips.md.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tilesim import config
from tilesim.arch.dram import checker, compile as dcompile, energy, mapping, model, patterns
from tilesim.arch.dram.standards import ALL, ORDERING_RULES, STANDARDS, TIMING_NAMES
from tilesim.config import DramControllerConfig
from tilesim.errors import ConfigError

NAMES = list(ALL)                      # ddr3 hbm2 hbm2e hbm3 gddr6 + hbm2_dramsim3


@pytest.fixture(scope="module")
def systems():
    cache = {}

    def get(name, **ctl):
        key = (name, tuple(sorted(ctl.items())))
        if key not in cache:
            cache[key] = model.build(model.memory(name, controller=DramControllerConfig(**ctl)))
        return cache[key]
    return get


def capacity(system) -> int:
    return system.n_channels * system.std.channel_bytes


def addr_of(system, ch=0, bg=0, ba=0, row=0, col=0) -> int:
    """The byte address of a DRAM location: the mapping run backwards (mixed radix)."""
    value = {"ch": ch, "bg": bg, "ba": ba, "ro": row, "co": col}
    a, weight = 0, 1
    for f, r, m in zip(system.mapping.field, system.mapping.radix, system.mapping.mult):
        a += (value[mapping.FIELDS[f]] // int(m)) % int(r) * weight
        weight *= int(r)
    return a * system.std.granule_bytes


def commands(result, ch=0):
    """[(cycle, command name, bank group, bank, row)] of one channel, in issue order."""
    tr = result.trace
    idx = np.flatnonzero(tr["channel"] == ch)
    return [(int(tr["cycle"][i]), "ACT PRE RD WR REF".split()[tr["command"][i]],
             int(tr["bankgroup"][i]), int(tr["bank"][i]), int(tr["row"][i])) for i in idx]


# ------------------------------------------------------------------------------------------
# Standards as data
# ------------------------------------------------------------------------------------------


def test_registry_agrees_with_config():
    assert tuple(STANDARDS) == config.MEMORY_STANDARDS
    assert tuple(TIMING_NAMES) == config.DRAM_TIMING_KEYS
    for std in ALL.values():
        assert tuple(s.name for s in std.timings) == TIMING_NAMES, std.name


@pytest.mark.parametrize("name", NAMES)
def test_every_number_has_a_source_and_every_preset_is_complete(name):
    std = ALL[name]
    assert std.source and std.org_source and std.energy.source and std.energy.target_source
    needed = {s.name for s in std.timings if s.kind != "expr"}
    for p in std.presets:
        assert p.source, f"{name} preset at {p.rate_gbps} Gb/s has no source"
        assert set(p.values) == needed, f"{name} preset {p.rate_gbps}: {set(p.values) ^ needed}"


@pytest.mark.parametrize("name", NAMES)
def test_organisation_is_consistent(name):
    """Pins = channels x width; a burst's bytes over nBL cycles is the per-pin peak; the
    default capacity is the banks x rows x row size of every channel."""
    std = ALL[name]
    assert std.channel_width_bits * std.channels_per_device == std.pins_per_device
    cs = dcompile.compile_standard(std)
    assert cs.timings["nBL"] == std.min_nbl
    pin_peak = std.pins_per_device * std.default_rate_gbps / 8
    assert cs.peak_gbps_per_channel * std.channels_per_device == pytest.approx(pin_peak)
    assert std.channel_bytes * std.channels_per_device == std.default_device_bytes


@pytest.mark.parametrize("name", NAMES)
def test_each_preset_is_reproduced_at_its_own_rate(name):
    std = ALL[name]
    for p in std.presets:
        t = dcompile.resolve_timings(std, p.rate_gbps)
        for k, v in p.values.items():
            floor = std.timing(k).at_least
            expected = max(v, dcompile.eval_expr(floor, t)) if floor else v
            assert t[k] == expected, (name, p.rate_gbps, k)


def test_gddr6_preset_trc_is_lifted_to_tras_plus_trp():
    """Ramulator 2.1's GDDR6 preset has tRC 79 < tRAS 53 + tRP 27 (dram_standards.md 2.3)."""
    t = dcompile.resolve_timings(ALL["gddr6"], 14.0)
    assert t["nRC"] == t["nRAS"] + t["nRP"] == 80


@pytest.mark.parametrize("name", NAMES)
def test_rerounding_keeps_every_ns_delay(name):
    """At another rate, an ns timing covers its preset's ns and is at most one tCK longer."""
    std = ALL[name]
    lo, hi = std.rate_range_gbps
    for rate in np.linspace(lo, hi, 5):
        preset = dcompile.pick_preset(std, rate)
        t = dcompile.resolve_timings(std, rate)
        tck, tck_ref = std.tck_ns(rate), std.tck_ns(preset.rate_gbps)
        for spec in std.timings:
            if spec.kind != "ns" or spec.at_least:
                continue
            ns = preset.values[spec.name] * tck_ref
            assert ns - 1e-9 <= t[spec.name] * tck < ns + tck + 1e-9, (name, rate, spec.name)


@pytest.mark.parametrize("name", NAMES)
def test_ordering_rules_hold_at_every_rate(name):
    std = ALL[name]
    lo, hi = std.rate_range_gbps
    for rate in np.linspace(lo, hi, 7):
        t = dcompile.resolve_timings(std, rate)
        for rule in ORDERING_RULES:
            assert t[rule.timing] >= dcompile.eval_expr(rule.at_least, t), (name, rate, rule)


def test_expressions_see_only_named_timings():
    assert dcompile.eval_expr("max(nRAS, 3) + nRP - 1", {"nRAS": 5, "nRP": 2}) == 6
    for bad in ("nFOO + 1", "__import__('os')", "nRAS ** 2", "nRAS.real"):
        with pytest.raises(ValueError):
            dcompile.eval_expr(bad, {"nRAS": 5})


def test_compiled_table_holds_each_row():
    cs = dcompile.compile_standard("hbm3")
    t = cs.timings
    ACT, PRE, RD, WR = 0, 1, 2, 3
    assert cs.lat[2, ACT, RD] == t["nRCD"] and cs.lat[2, ACT, WR] == t["nRCDW"]
    assert cs.lat[2, PRE, ACT] == t["nRP"] and cs.lat[2, ACT, ACT] == t["nRC"]
    assert cs.lat[1, WR, RD] == t["nCWL"] + t["nBL"] + t["nWTR_L"]
    assert cs.lat[0, RD, RD] == max(t["nBL"], t["nCCD_S"])
    assert list(cs.win_len) == [4] and list(cs.win_lat) == [t["nFAW"]]
    assert cs.lat[0, RD, ACT] == dcompile.NO_CONSTRAINT    # HBM: separate row/column buses
    assert dcompile.compile_standard("gddr6").lat[0, RD, ACT] == 1   # one command bus


# ------------------------------------------------------------------------------------------
# Bad input: one line naming the key
# ------------------------------------------------------------------------------------------


def _chip_with_memory(memory: dict) -> str:
    import yaml
    d = yaml.safe_load((config.CONFIG_DIR / "teach-4x4.yaml").read_text())
    d["memory"] = memory
    return yaml.safe_dump(d)


@pytest.mark.parametrize("memory,needles", [
    ({"standard": "hbm2", "timing_overrides": {"nRC": 40}},
     ["memory.timing_overrides.nRC", "40", "nRAS + nRP = 48", "tRC >= tRAS + tRP"]),
    ({"standard": "hbm3", "timing_overrides": {"nRCD": 50}},
     ["memory.timing_overrides.nRCD", "tRAS >= tRCD"]),
    ({"standard": "gddr6", "timing_overrides": {"nCCD_L": 1}},
     ["memory.timing_overrides.nCCD_L", "tCCD_L >= tCCD_S"]),
    ({"standard": "ddr3", "timing_overrides": {"nRFC": 99999}},
     ["memory.timing_overrides.nRFC", "tREFI > tRFC"]),
    ({"standard": "hbm2", "timing_overrides": {"nBL": 1}}, ["memory.timing_overrides.nBL",
                                                           "BL4"]),
    ({"standard": "hbm3", "controller": {"address_mapping": "ro-ba-bg-co"}},
     ["memory.controller.address_mapping", "'ch' is missing"]),
    ({"standard": "hbm3", "controller": {"address_mapping": "ro-ba-bg-ch-co-xx"}},
     ["memory.controller.address_mapping", "'xx' is not a field"]),
    ({"standard": "hbm3", "devices": 0}, ["memory.devices", "0 is not allowed"]),
    ({"standard": "hbm5"}, ["memory.standard", "'hbm5'", "did you mean"]),
])
def test_bad_memory_config_is_one_line_naming_the_key(memory, needles):
    with pytest.raises(ConfigError) as exc:
        config.loads(_chip_with_memory(memory), "chip.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("chip.yaml: ")
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_overriding_tras_alone_lifts_trc():
    """nRC follows nRAS + nRP unless the user overrides nRC itself."""
    cfg = config.loads(_chip_with_memory({"standard": "hbm2", "timing_overrides":
                                          {"nRAS": 60}}))
    t = model.build(cfg.memory).timings
    assert t["nRAS"] == 60 and t["nRC"] == 60 + t["nRP"]


def test_data_rate_rerounds_timings():
    cfg = config.load("h100-like-hbm3")                  # 5.234 Gb/s: tCK 0.764 ns
    s = model.build(cfg.memory)
    assert s.tck_ns == pytest.approx(4 / 5.234)
    assert s.timings["nRCD"] == math.ceil(31 * 0.625 / s.tck_ns - 1e-6)
    assert s.peak_gbps == pytest.approx(3350, rel=0.005)


@pytest.mark.parametrize("path", sorted(config.CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_builds_a_dram_model(path):
    cfg = config.load(path)
    if cfg.memory is not None:
        s = model.build(cfg.memory)
        from tilesim.arch import dram
        assert s.peak_gbps == pytest.approx(dram.peak_gbps(cfg.memory))


# ------------------------------------------------------------------------------------------
# Address mapping
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,devices,text", [
    ("hbm3", 5, "default"), ("gddr6", 8, "default"), ("ddr3", 2, "default"),
    ("hbm2_dramsim3", 1, "default"), ("hbm2", 1, "ch-ro-ba-bg-co"),
    ("hbm2", 3, "ro-co:2-ba-ch-bg-co"),
])
def test_numba_mapping_matches_the_plain_one(name, devices, text):
    from tilesim.arch._engine import dram_map
    s = model.build(model.memory(name, devices,
                                 controller=DramControllerConfig(address_mapping=text)))
    rng = np.random.default_rng(0)
    for a in rng.integers(0, capacity(s), 300):
        d = mapping.decode(s.mapping, int(a), s.std.granule_bytes)
        assert dram_map(s.tables, int(a)) == (d["ch"], d["bg"], d["ba"], d["ro"], d["co"])
        assert addr_of(s, d["ch"], d["bg"], d["ba"], d["ro"], d["co"]) == \
            int(a) // s.std.granule_bytes * s.std.granule_bytes


@pytest.mark.parametrize("name", [n for n in NAMES if n != "hbm2_dramsim3"])
def test_default_mapping_keeps_a_chunk_together_and_interleaves_channels(name, systems):
    """512 B stay in one channel, bank and row; the next 512 B go to the next channel;
    consecutive chunks of one channel change bank group (tCCD_S between them)."""
    s = systems(name)
    assert s.chunk_bytes == 512
    g = s.std.granule_bytes
    f = [mapping.decode(s.mapping, a, g) for a in range(0, 512 * 2 * s.n_channels, g)]
    per = 512 // g
    for k in range(len(f) // per):
        chunk = f[k * per:(k + 1) * per]
        assert len({(x["ch"], x["bg"], x["ba"], x["ro"]) for x in chunk}) == 1
        assert chunk[0]["ch"] == k % s.n_channels
    if s.std.bankgroups > 1:
        assert f[0]["bg"] != f[per * s.n_channels]["bg"]


# ------------------------------------------------------------------------------------------
# Earliest legal cycles, as formulas of named timings
# ------------------------------------------------------------------------------------------


def _run(s, reqs, **kw):
    """reqs: [(arrival, address, is_write)], one granule each."""
    a = [r[1] for r in reqs]
    return model.simulate(s, a, s.std.granule_bytes, [r[2] for r in reqs],
                          [r[0] for r in reqs], trace_capacity=1000, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_read_to_a_closed_bank_takes_rcd_cl_bl(name, systems):
    s = systems(name)
    t = s.timings
    r = _run(s, [(10, addr_of(s, bg=1, ba=1, row=7), False)])
    assert [c[:2] for c in commands(r)] == [(10, "ACT"), (10 + t["nRCD"], "RD")]
    assert r.comp_cycle[0] == 10 + model.unloaded_read_cycles(t, "closed")


@pytest.mark.parametrize("name", NAMES)
def test_row_conflict_precharges_and_reopens(name, systems):
    """t_pre = max(t_act + nRAS, t_rd + nRTP); t_act2 = max(t_pre + nRP, t_act + nRC)."""
    s = systems(name)
    t = s.timings
    r = _run(s, [(10, addr_of(s, row=1), False), (10, addr_of(s, row=2), False)])
    (a1, c1, *_), (r1, c2, *_), (p, c3, *_), (a2, c4, *_), (r2, c5, *_) = commands(r)
    assert (c1, c2, c3, c4, c5) == ("ACT", "RD", "PRE", "ACT", "RD")
    assert r1 == a1 + t["nRCD"]
    assert p == max(a1 + t["nRAS"], r1 + t["nRTP"])
    assert a2 == max(p + t["nRP"], a1 + t["nRC"])
    assert r2 == a2 + t["nRCD"]
    assert r.comp_cycle[1] - 10 == (r2 - 10) + t["nCL"] + t["nBL"]


@pytest.mark.parametrize("name", [n for n in NAMES if ALL[n].bankgroups > 1])
def test_read_after_write_in_the_same_bank_group_waits_for_twtr_l(name, systems):
    s = systems(name)
    t = s.timings
    w_arr = 10
    wr = w_arr + t["nRCDW"]
    r = _run(s, [(w_arr, addr_of(s, bg=2, ba=0, row=3), True),
                 (wr + 1, addr_of(s, bg=2, ba=1, row=4), False)])
    cmds = commands(r)
    act2 = [c for c in cmds if c[1] == "ACT"][1][0]
    rd = [c for c in cmds if c[1] == "RD"][0][0]
    assert [c[0] for c in cmds if c[1] == "WR"] == [wr]
    assert act2 == max(wr + 1, w_arr + t["nRRD_L"])
    assert rd == max(act2 + t["nRCD"], wr + t["nCWL"] + t["nBL"] + t["nWTR_L"])


@pytest.mark.parametrize("name", NAMES)
def test_activations_respect_trrd_and_the_four_activate_window(name, systems):
    """Reads to 6 closed banks in different bank groups at once: ACT k at
    max(ACT k-1 + nRRD_S, ACT k-4 + nFAW), one cycle later when a read holds the one
    command bus in that cycle (DDR3, GDDR6)."""
    s = systems(name)
    t = s.timings
    nbg = s.std.bankgroups
    locs = [(k % nbg, (k // nbg) % s.std.banks_per_group) for k in range(6)]
    r = _run(s, [(10, addr_of(s, bg=g, ba=b, row=9), False) for g, b in locs])
    cmds = commands(r)
    acts = [c for c in cmds if c[1] == "ACT"]
    col_cycles = {c[0] for c in cmds if c[1] == "RD"}
    single_bus = s.std.command_bus == "single"
    expect = []
    for k, (g, b) in enumerate(locs):
        e = 10
        if k:
            same_bg = acts[k - 1][2] == g
            e = max(e, expect[k - 1] + (t["nRRD_L"] if same_bg else t["nRRD_S"]))
        if k >= 4:
            e = max(e, expect[k - 4] + t["nFAW"])
        while single_bus and e in col_cycles:
            e += 1
        expect.append(e)
    assert [a[0] for a in acts] == expect


def test_refresh_is_exact_after_idle_gaps(systems):
    """Channel 0 refreshes at nREFI, 2 nREFI, ... whether or not traffic flows, closing an
    open row first (PRE, then REF nRP later); the lazily done refreshes land on those cycles."""
    s = systems("hbm3")
    t = s.timings
    n_ref = t["nREFI"]
    late = 7 * n_ref + 123
    r = _run(s, [(10, addr_of(s, row=5), False), (late, addr_of(s, row=6), False)])
    cmds = commands(r)
    refs = [c[0] for c in cmds if c[1] == "REF"]
    assert refs[0] == n_ref + t["nRP"]                    # the row of request 0 was open
    assert refs[1:7] == [k * n_ref for k in range(2, 8)]
    assert [c[1] for c in cmds if refs[0] - t["nRP"] <= c[0] < refs[0]] == ["PRE"]
    assert not checker.check_trace(s.std, t, r.trace)
    # request 1 arrives inside the tRFC of the refresh at 7 nREFI: its ACT waits for it
    assert r.comp_cycle[1] == max(late, 7 * n_ref + t["nRFC"]) + \
        model.unloaded_read_cycles(t, "closed")


def test_refresh_is_staggered_over_channels(systems):
    s = systems("gddr6", read_queue=8)
    a, w = patterns.make("stream", 5000, 64, capacity(s))
    r = model.simulate(s, a, 64, w, trace_capacity=40000)
    firsts = [int(r.trace["cycle"][(r.trace["command"] == 4) & (r.trace["channel"] == c)][0])
              for c in range(s.n_channels)]
    assert len(set(firsts)) == s.n_channels


# ------------------------------------------------------------------------------------------
# Every request once; bytes; the checker on every standard and pattern
# ------------------------------------------------------------------------------------------

PATTERN_CASES = [("stream", 1.0), ("random", 1.0), ("stream", 0.5), ("random", 0.6),
                 ("adversarial", 1.0), ("adversarial", 0.5)]


def _pattern(s, pat, frac, n=4000, req=64):
    if pat == "adversarial":       # the same bank of channel 0, a new row every request
        stride = s.std.row_bytes * s.std.banks * s.n_channels
        return patterns.make("strided", n, req, capacity(s), frac, stride=stride)
    return patterns.make(pat, n, req, capacity(s), frac, seed=2)


@pytest.mark.parametrize("page", ["open", "closed"])
@pytest.mark.parametrize("name", NAMES)
def test_checker_finds_no_violation_and_every_request_completes_once(name, page, systems):
    s = systems(name, page_policy=page, read_queue=32, write_queue=32)
    for pat, frac in PATTERN_CASES:
        a, w = _pattern(s, pat, frac)
        r = model.simulate(s, a, 64, w, trace_capacity=200000)
        assert r.trace_dropped == 0
        assert not checker.check_trace(s.std, s.timings, r.trace), (pat, frac)
        n = len(a)
        assert (r.comp_cycle >= r.enq_cycle).all() and (r.enq_cycle >= 0).all()
        assert np.array_equal(np.sort(r.done_order), np.arange(n))      # each id once
        assert r.counter("reads_done") + r.counter("writes_done") == n
        assert r.counter("bytes_read") == 64 * int((~w).sum())
        assert r.counter("bytes_written") == 64 * int(w.sum())
        bursts = 64 // s.std.granule_bytes
        assert r.counter("RD") == bursts * int((~w).sum())
        assert r.counter("WR") == bursts * int(w.sum())
        assert r.counter("row_hits") + r.counter("row_misses") + r.counter("row_conflicts") \
            == r.counter("RD") + r.counter("WR")


def test_request_arrays_of_different_lengths_are_one_line_errors(systems):
    from tilesim.errors import InputError
    s = systems("hbm3")
    with pytest.raises(InputError, match="arrival has 2 entries for 3 requests"):
        model.simulate(s, [0, 64, 128], 64, False, [0, 1])


def test_bytes_served_equal_bytes_asked_for_odd_sizes(systems):
    s = systems("gddr6")
    rng = np.random.default_rng(5)
    base = rng.integers(0, capacity(s) // 512, 3000) * 512
    off = rng.integers(0, 256, 3000)
    size = rng.integers(1, 256, 3000)
    w = rng.random(3000) < 0.3
    r = model.simulate(s, base + off, size, w, trace_capacity=100000)
    assert r.counter("bytes_read") + r.counter("bytes_written") == int(size.sum())
    bursts = (off % 32 + size + 31) // 32
    assert r.counter("RD") + r.counter("WR") == int(bursts.sum())
    assert not checker.check_trace(s.std, s.timings, r.trace)


@pytest.mark.parametrize("name", ["hbm3", "gddr6", "ddr3"])
def test_checker_fails_when_the_controller_uses_a_broken_timing(name, systems):
    """The compiled nRCD one cycle short (as an override, and as a corrupted compiled table)
    while the checker keeps the true value: the checker must see tRCD violations."""
    true = systems(name)
    a, w = patterns.make("random", 3000, 64, capacity(true), seed=3)
    short = model.build(model.memory(name, overrides={"nRCD": true.timings["nRCD"] - 1}))
    r = model.simulate(short, a, 64, w, trace_capacity=50000)
    found = checker.check_trace(true.std, true.timings, r.trace)
    assert found and all(v.rule == "tRCD (read)" for v in found)
    tab = true.tables.tab.copy()
    tab[(2 * 5 + 0) * 5 + 2] -= 1                      # lat[bank, ACT, RD]
    corrupt = dataclasses.replace(true, tables=true.tables._replace(tab=tab))
    r = model.simulate(corrupt, a, 64, w, trace_capacity=50000)
    assert checker.check_trace(true.std, true.timings, r.trace)


def test_checker_sees_state_errors():
    std = ALL["hbm3"]
    t = dcompile.resolve_timings(std)
    trace = {k: np.array(v) for k, v in {
        "cycle": [0, 100, 200], "channel": [0, 0, 0], "bankgroup": [0, 0, 0],
        "bank": [0, 0, 0], "row": [1, 2, 1], "column": [-1, 0, -1], "command": [0, 2, 0]}.items()}
    rules = {v.rule for v in checker.check_trace(std, t, trace)}
    assert "RD to a row that is not open" in rules and "ACT to an open bank" in rules


@pytest.mark.parametrize("name", ["hbm2_dramsim3", "hbm3", "gddr6", "ddr3"])
def test_lower_bound_wakeups_issue_the_same_commands_as_exact_rescans(name, systems):
    s = systems(name, read_queue=16, write_queue=16)
    exact = dataclasses.replace(s, tables=s.tables._replace(exact_next=1))
    arrival = np.sort(np.random.default_rng(1).integers(0, 20000, 4000))
    for pat, frac in PATTERN_CASES:
        a, w = _pattern(s, pat, frac)
        for arr in (None, arrival):
            r1 = model.simulate(s, a, 64, w, arr, trace_capacity=100000)
            r2 = model.simulate(exact, a, 64, w, arr, trace_capacity=100000)
            assert np.array_equal(r1.comp_cycle, r2.comp_cycle), (pat, frac)
            for k in r1.trace:
                assert np.array_equal(r1.trace[k], r2.trace[k]), (pat, frac, k)


def test_a_full_channel_does_not_hold_up_the_others(systems):
    """DRAMsim3's trap (dram_standards.md, q32 rows): with a tiny queue, in-order injection
    through one global head serialises channels. Here each channel injects on its own, so a
    stream still reaches most of the bandwidth it gets with a deep queue."""
    small = systems("gddr6", read_queue=4)
    deep = systems("gddr6")
    a, w = patterns.make("stream", 40000, 64, capacity(deep))
    assert model.simulate(small, a, 64, w).bandwidth_gbps > \
        0.6 * model.simulate(deep, a, 64, w).bandwidth_gbps


def test_writes_drain_in_batches_between_watermarks(systems):
    """Mixed traffic: the controller switches direction rarely (turnarounds cost tRTW and
    tWTR), far fewer times than an alternating request order would."""
    s = systems("hbm3", read_queue=32, write_queue=32)
    a, w = patterns.make("stream", 20000, 64, capacity(s), 0.5)
    r = model.simulate(s, a, 64, w, trace_capacity=200000)
    tr = r.trace
    ch0 = tr["command"][(tr["channel"] == 0) & (tr["command"] >= 2) & (tr["command"] <= 3)]
    switches = int((np.diff(ch0) != 0).sum())
    assert switches < len(ch0) / 8


def test_closed_page_precharges_idle_rows(systems):
    s = systems("hbm3", page_policy="closed")
    r = _run(s, [(10, addr_of(s, row=3), False)])
    cmds = commands(r)
    t = s.timings
    assert [c[1] for c in cmds] == ["ACT", "RD", "PRE"]
    assert cmds[2][0] == max(cmds[0][0] + t["nRAS"], cmds[1][0] + t["nRTP"])
    assert r.counter("pre_closed_page") == 1


# ------------------------------------------------------------------------------------------
# Energy
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_streaming_read_energy_lands_within_20_percent_of_the_cited_figure(name, systems):
    s = systems(name)
    a, w = patterns.make("stream", 200000, 64, capacity(s))
    e = model.simulate(s, a, 64, w).energy()
    assert e["pj_per_bit"] == pytest.approx(s.std.energy.target_pj_per_bit, rel=0.2)
    assert all(row["source"] for row in e["table"].values())


def test_hbm_costs_less_energy_per_bit_than_gddr6(systems):
    """energy_cost_chips.md 3.3: GDDR6 7.5 > HBM2E 6.0 (one vendor table), HBM2 3.9."""
    per_bit = {}
    for name in ("hbm2", "hbm2e", "hbm3", "gddr6"):
        s = systems(name)
        a, w = patterns.make("stream", 100000, 64, capacity(s))
        per_bit[name] = model.simulate(s, a, 64, w).energy()["pj_per_bit"]
    assert max(per_bit["hbm2"], per_bit["hbm2e"], per_bit["hbm3"]) < per_bit["gddr6"]


def test_energy_is_the_sum_of_counted_actions(systems):
    s = systems("hbm2")
    a, w = patterns.make("random", 5000, 64, capacity(s), 0.5)
    r = model.simulate(s, a, 64, w)
    e = r.energy()
    v = {k: row["value"] for k, row in e["table"].items()}
    bits = s.std.granule_bytes * 8
    assert e["breakdown_pj"]["activate"] == pytest.approx(r.counter("ACT") * v["act_pj"])
    assert e["breakdown_pj"]["io"] == pytest.approx(
        (r.counter("RD") + r.counter("WR")) * bits * v["io_pj_per_bit"])
    assert e["total_pj"] == pytest.approx(sum(e["breakdown_pj"].values()))
    assert e["breakdown_pj"]["read_core"] > 0 and e["breakdown_pj"]["write_core"] > 0


def test_io_term_is_calibrated_not_measured():
    """Honesty check: the I/O term is what makes the streaming closed form equal the target."""
    for std in ALL.values():
        io = energy.calibrated_io_pj_per_bit(std)
        assert io > 0
        assert energy.streaming_core_pj_per_bit(std) + io == \
            pytest.approx(std.energy.target_pj_per_bit)


# ------------------------------------------------------------------------------------------
# Results against the sources (dram_standards.md)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_streaming_reads_reach_85_percent_of_peak(name, systems):
    s = systems(name)
    a, w = patterns.make("stream", 400000, 64, capacity(s))
    r = model.simulate(s, a, 64, w)
    assert r.bandwidth_gbps >= 0.85 * s.peak_gbps
    assert r.row_hit_rate > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_random_64b_reads_land_at_the_bank_level_bound(name, systems):
    """Random 64 B reads open one row each. Per channel an ACT can come no more often than
    every max(tRRD_S, tFAW / 4, tRC / banks) cycles, nor faster than the data bus moves
    64 B; refresh takes tRFC of every tREFI. Achieved: between 80 % and 100 % of that."""
    s = systems(name)
    t = s.timings
    bursts = 64 // s.std.granule_bytes
    per_act = max(t["nRRD_S"], t["nFAW"] / 4, t["nRC"] / s.std.banks,
                  bursts * max(t["nBL"], t["nCCD_S"]))
    bound = s.n_channels * 64 / (per_act * s.tck_ns) * (1 - t["nRFC"] / t["nREFI"])
    a, w = patterns.make("random", 200000, 64, capacity(s), seed=4)
    r = model.simulate(s, a, 64, w)
    assert 0.8 * bound <= r.bandwidth_gbps <= bound * 1.001
    assert r.row_hit_rate == pytest.approx(1 - 1 / bursts, abs=0.01)


def test_hbm2_at_2gbps_matches_dramsim3(systems):
    """dram_standards.md 'Reference runs', DRAMsim3 HBM2_8Gb_x128 (8 x 128 b, 64 B access,
    tFAW 30): 235.9 GB/s streaming (92 %), 61.8 GB/s random 64 B (24 %), 46 ns idle random
    read. Ours uses the same organisation (hbm2_dramsim3) and DRAMsim3's 32-entry queue."""
    s = systems("hbm2_dramsim3", read_queue=32, write_queue=32)
    cap = capacity(s)
    a, w = patterns.make("stream", 400000, 64, cap)
    stream = model.simulate(s, a, 64, w).bandwidth_gbps
    a, w = patterns.make("random", 200000, 64, cap, seed=6)
    rand = model.simulate(s, a, 64, w).bandwidth_gbps
    a, w = patterns.make("random", 16384, 64, cap, seed=7)
    idle = model.simulate(s, a, 64, w, np.arange(16384) * 200)
    idle_ns = idle.read_latency_cycles().mean() * s.tck_ns
    assert stream == pytest.approx(235.9, rel=0.03)
    assert rand == pytest.approx(61.8, rel=0.08)
    assert idle_ns == pytest.approx(46, rel=0.10)
    # mostly conflicts (open page, random rows): the conflict formula, in ns
    assert idle_ns == pytest.approx(model.unloaded_read_cycles(s.timings, "conflict")
                                    * s.tck_ns, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_checker_on_long_mixed_runs(name, systems):
    """Longer runs (refresh many times over, queues full, write drains, mode switches), to
    catch interleavings the short runs above miss."""
    s = systems(name)
    rng = np.random.default_rng(11)
    for pat, frac in (("random", 0.7), ("stream", 0.6)):
        a, w = patterns.make(pat, 60000, 64, capacity(s), frac, seed=int(rng.integers(99)))
        arrival = np.cumsum(rng.choice([0, 0, 0, 1, 40, 3000], size=len(a)))
        r = model.simulate(s, a, 64, w, arrival, trace_capacity=1_000_000)
        assert r.trace_dropped == 0 and r.counter("REF") > 10
        assert not checker.check_trace(s.std, s.timings, r.trace)
        assert np.array_equal(np.sort(r.done_order), np.arange(len(a)))


@pytest.mark.slow          # ~6 s on a cold cache: it compiles the API functions as entry points
@pytest.mark.parametrize("name", ["hbm3", "gddr6"])
def test_kernel_api_driven_like_the_chip_loop_matches_the_driver(name, systems):
    """The calls the chip loop will make, from a plain-Python event loop over all channels
    in global time order (arrivals before wake-ups in a cycle; enqueue, then service at the
    same cycle; drain the done FIFO), give the same completions, counters and per-channel
    commands as the standalone driver. Arrivals are spread so no queue fills up."""
    import heapq

    from tilesim.arch import _engine as E

    s = systems(name)
    T = s.tables
    rng = np.random.default_rng(8)
    n = 3000
    a, w = patterns.make("random", n, 64, capacity(s), 0.7, seed=9)
    arrival = np.cumsum(rng.integers(0, 12 if s.n_channels > 8 else 60, n))
    ref = model.simulate(s, a, 64, w, arrival, trace_capacity=100000)

    S = model.new_state(s, n, trace_capacity=100000)
    heap = [(int(arrival[i]), 0, i) for i in range(n)]
    heapq.heapify(heap)
    wake = {}
    done = []
    while heap:
        t, kind, x = heapq.heappop(heap)
        if kind == 0:
            ch = E.dram_channel(T, int(a[x]))
            assert E.dram_enqueue(T, S, x, int(a[x]), 64, bool(w[x]), t)
            if wake.get(ch, E.DRAM_NEVER) > t:
                wake[ch] = t
                heapq.heappush(heap, (t, 1, ch))
            continue
        if wake.get(x) != t:
            continue                                   # superseded wake-up
        nt = E.dram_service(T, S, x, t)
        wake[x] = nt
        if nt < E.DRAM_NEVER:
            heapq.heappush(heap, (nt, 1, x))
        while (req := E.dram_pop_done(S)) >= 0:
            done.append(req)
    comp = np.array([E.dram_completion(S, i) for i in range(n)])
    E.dram_finish(T, S, int(comp.max()))
    v = model.views(s, S)
    assert sorted(done) == list(range(n))
    assert np.array_equal(comp, ref.comp_cycle)
    assert np.array_equal(v["counters"], ref.counters)
    assert all(E.dram_counter(S, 0, k) == ref.counters[0, k] for k in range(16))
    mine = v["trace"][:E.dram_commands_issued(S)]
    theirs = np.stack([ref.trace[k] for k in model.TRACE_FIELDS], axis=1)
    for ch in range(s.n_channels):
        assert np.array_equal(mine[mine[:, 1] == ch], theirs[theirs[:, 1] == ch])


def test_dram_kernels_are_compiled_without_reference_counting():
    """_engine.py docstring: reference counting was a third of the run time. ``_nrt`` is an
    underscore option of numba, so check every DRAM kernel still sets it (all but
    dram_map_many, which allocates its result)."""
    from numba.core.registry import CPUDispatcher

    from tilesim.arch import _engine as E
    kernels = {k: v for k, v in vars(E).items()
               if isinstance(v, CPUDispatcher) and (k.startswith("dram_") or
                                                     k.startswith("_dram_"))}
    assert len(kernels) > 15
    for name, d in kernels.items():
        expected = None if name == "dram_map_many" else False
        assert d.targetoptions.get("_nrt") is expected, name


def test_channel_hash_spreads_strided_rows_and_keeps_streams_even():
    """h100-like's five HBM3 stacks give 160 channels of 512 B chunks. Rows of a row-major
    bf16 matrix with 4096 columns sit 8 KiB = 16 chunks apart: without the hash they reach
    160 / gcd(16, 160) = 10 channels; with it, (16 r + floor(16 r / 160)) mod 160 reaches all
    160 in 160 rows. A sequential stream still covers every channel once per 160 chunks, and
    the bytes of one chunk stay in one channel."""
    from tilesim.arch import chip, _engine
    d = config.to_dict(config.load("h100-like-hbm3"))
    d["memory"].setdefault("controller", {})["channel_hash"] = False
    plain = config.from_dict(d)
    d["memory"]["controller"]["channel_hash"] = True
    hashed = config.from_dict(d)
    rows = np.arange(160, dtype=np.int64) * 8192
    seq = np.arange(160 * 4, dtype=np.int64) * 512
    inside = np.arange(0, 512, 32, dtype=np.int64) + 512 * 37
    for cfg, strided in ((plain, 10), (hashed, 160)):
        T = chip.MemorySide(cfg, 16).T
        assert T.n_ch == 160
        assert len(set(_engine.dram_map_many(T, rows).tolist())) == strided
        ch = _engine.dram_map_many(T, seq).reshape(4, 160)
        assert all(sorted(r) == list(range(160)) for r in ch.tolist())
        assert len(set(_engine.dram_map_many(T, inside).tolist())) == 1


def test_bank_hash_spreads_strided_rows_over_banks_and_keeps_streams_even():
    """The channel hash alone leaves the bank fields as they are, so rows of a row-major matrix
    8 KiB apart (bf16, 4096 columns: llama-3-8b's activations) that reach one channel all fall
    in one bank of it, alternating rows: a row conflict every other request. With
    ``bank_hash`` the bank group and bank are offset by the XOR-fold of the address above them,
    so the same rows reach every bank of every channel (160 x 16), while a sequential stripe of
    160 x 16 chunks still lands once on each (channel, bank) and a chunk stays in one row of
    one bank. Measured through the DRAM model: 256 B reads 8 KiB apart run at a fraction of
    the stream's bandwidth without the hash and at the stream's with it. Both hashes keep the
    mapping one-to-one: 8 stripes of 160 x 16 x 2 chunks land on as many distinct (channel,
    bank group, bank, row, column) places."""
    from tilesim.arch import _engine
    from tilesim.arch.dram import model
    d = config.to_dict(config.load("h100-like-hbm3"))
    d["memory"]["controller"]["bank_hash"] = False
    plain = config.from_dict(d)
    d["memory"]["controller"]["bank_hash"] = True
    hashed = config.from_dict(d)

    def banks(T, addrs):
        return [_engine.dram_map(T, int(a))[:3] for a in addrs]

    rows = np.arange(4096, dtype=np.int64) * 8192
    stripe = np.arange(160 * 16, dtype=np.int64) * 512 + 512 * 160 * 16 * 7
    inside = np.arange(0, 512, 32, dtype=np.int64) + 512 * 12345
    gbps = {}
    for name, cfg, spread in (("plain", plain, 160), ("hashed", hashed, 160 * 16)):
        system = model.build(cfg.memory)
        T = system.tables
        assert (T.n_ch, T.n_banks) == (160, 16)
        assert len(set(banks(T, rows))) == spread
        assert len(set(banks(T, stripe))) == 160 * 16
        assert len({_engine.dram_map(T, int(a))[:4] for a in inside}) == 1
        every = np.arange(160 * 16 * 2 * 8, dtype=np.int64) * 512 + 512 * 160 * 16 * 2 * 8 * 5
        assert len({_engine.dram_map(T, int(a)) for a in every}) == every.size
        addr = np.arange(16384, dtype=np.int64) * 8192
        gbps[name] = model.simulate(system, addr, 256).summary()["bandwidth_gbps"]
        stream = np.arange(8192, dtype=np.int64) * 512
        gbps[name + " stream"] = model.simulate(system, stream, 512).summary()["bandwidth_gbps"]
    assert gbps["plain"] < 0.5 * gbps["plain stream"], gbps
    assert gbps["hashed"] > 0.9 * gbps["hashed stream"], gbps
