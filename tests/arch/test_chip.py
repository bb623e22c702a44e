"""The chip event loop (tilesim.arch.chip): functional results against numpy, double buffering
against bounds derived from the run's own timestamps, conservation of bytes, flits,
instructions and MACs, determinism, bank conflicts, and the one-line run-time errors."""
from __future__ import annotations

import numpy as np
import pytest

from tilesim import config
from tilesim.arch import chip, dma
from tilesim.dtypes import DTYPES
from tilesim.errors import ProgramError
from tilesim.isa import assemble
from tilesim.isa.opcodes import Op
from tilesim.programs.examples import gemm_tile_loop, path

EXAMPLES = {"gemm_single_buffered": "teach-4x4", "gemm_double_buffered": "teach-4x4",
            "gemm_two_core": "teach-2core"}


def _program(name):
    return assemble(path(name).read_text(), str(path(name)))


def _ab(seed, m=16, k=16, n=4):
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))


@pytest.fixture(scope="module")
def example_runs():
    """Every example run functionally once on random int8 inputs: name -> (program, stats, A, B)."""
    out = {}
    for seed, (name, chip_name) in enumerate(EXAMPLES.items()):
        a, b = _ab(seed)
        prog = _program(name)
        out[name] = (prog, chip.run(prog, config.load(chip_name), functional=True,
                                    inputs={"A": a, "B": b}), a, b)
    return out


# ---- functional mode ----------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_output_equals_numpy(example_runs, name):
    _, stats, a, b = example_runs[name]
    np.testing.assert_array_equal(stats.memory.read("C"), a @ b)


def test_generator_writes_the_example_files():
    for slots, name in ((1, "gemm_single_buffered"), (2, "gemm_double_buffered")):
        assert assemble(gemm_tile_loop(16, 16, 4, 4, slots), "gen") == _program(name)


def test_functional_int32_wraps_like_the_hardware():
    """Accumulating past 2^31 wraps in the int32 accumulator, as two's-complement hardware."""
    a = np.full((16, 16), -128)
    b = np.full((16, 4), -128)
    stats = chip.run(_program("gemm_double_buffered"), config.load("teach-4x4"),
                     functional=True, inputs={"A": a, "B": b})
    np.testing.assert_array_equal(stats.memory.read("C"), a @ b)   # 16 * 2^14 fits
    big = chip.run(assemble(gemm_tile_loop(16, 4096 * 32, 4, 4, 2, a_tiled=True), "g"),
                   config.load("teach-4x4"), functional=True,
                   inputs={"A": np.full((4096 * 8, 16, 4), -128), "B": np.full((4096 * 32, 4), -128)})
    exact = 4096 * 32 * 128 * 128
    assert exact >= 2**31
    wrapped = (exact + 2**31) % 2**32 - 2**31
    assert (big.memory.read("C") == wrapped).all()


def test_timing_never_depends_on_values(example_runs):
    prog, stats, _, _ = example_runs["gemm_double_buffered"]
    zeros = chip.run(prog, config.load("teach-4x4"), functional=True,
                     inputs={"A": np.zeros((16, 16)), "B": np.zeros((16, 4))})
    assert zeros.same_timing(stats)


# ---- double buffering ---------------------------------------------------------------------


def _tile_times(prog, stats):
    """Per k-tile: L = first load start -> last load end, C = ldw start -> mm end (cycles)."""
    op = prog.instrs["op"]
    ld = np.nonzero(op == Op.LOAD)[0]
    ldw = np.nonzero(op == Op.LDW)[0]
    mm = np.nonzero(op == Op.MM)[0]
    a, b = ld[0::2], ld[1::2]
    load = np.maximum(stats.t_end[a], stats.t_end[b]) - stats.t_start[a]
    comp = stats.t_end[mm] - stats.t_start[ldw]
    store = np.nonzero(op == Op.STORE)[0][0]
    return load, comp, int(stats.t_end[store] - stats.t_start[store])


def test_double_buffering_overlaps_load_and_compute():
    """A 16-k-tile GEMM whose tile load (L) and compute (C) times are comparable.

    Single-buffered, the DMA and the array take turns, so the run lasts
    sum_t (L_t + C_t) + the store (equality, up to semaphore hand-over). Double-buffered, the
    steady state costs max(L, C) per tile, plus one of the other at the start (prologue) or
    end (epilogue) and the store: T * max(L, C) + min(L, C) + store <= cycles, and at most
    T * max(L, C) + L + C + store. L and C are taken from the single-buffered run, where each
    runs alone."""
    cfg = config.load("teach-4x4")
    m, k, tk = 64, 64, 4
    tiles = k // tk
    single_p = assemble(gemm_tile_loop(m, k, 4, tk, 1, a_tiled=True), "single")
    double_p = assemble(gemm_tile_loop(m, k, 4, tk, 2, a_tiled=True), "double")
    single = chip.run(single_p, cfg)
    double = chip.run(double_p, cfg)
    load, comp, store = _tile_times(single_p, single)
    assert 0.5 < load.mean() / comp.mean() < 2, "the test needs comparable load and compute"

    serial = int(load.sum() + comp.sum()) + store
    assert serial <= single.cycles <= serial * 1.02

    lo, hi = load.mean(), comp.mean()
    steady = tiles * max(lo, hi)
    assert steady + min(lo, hi) <= double.cycles * 1.02
    assert double.cycles <= (steady + lo + hi + store) * 1.05
    assert double.cycles < 0.7 * single.cycles


# ---- conservation -------------------------------------------------------------------------


def _check_conservation(prog, stats):
    ins = prog.instrs
    nbytes = dma.descriptor_bytes(ins, chip._BITS)
    load = int(nbytes[ins["op"] == Op.LOAD].sum())
    # a multicast load (dst_core >= 0) writes max(1, mc_count) SRAMs from one DRAM read
    copies = np.where(ins["dst_core"] >= 0, np.maximum(ins["mc_count"].astype(np.int64), 1), 1)
    load_written = int((nbytes * copies)[ins["op"] == Op.LOAD].sum())
    store = int(nbytes[ins["op"] == Op.STORE].sum())
    copy = int(nbytes[ins["op"] == Op.COPY].sum())
    # bytes DMA asked for = bytes the DRAM served
    assert stats.dram_read_bytes == load == stats.dram["counters"]["bytes_read"]
    assert stats.dram_write_bytes == store == stats.dram["counters"]["bytes_written"]
    # every DRAM request was served exactly once
    c = stats.dram["counters"]
    r = stats.dma_requests
    assert c["reads_done"] == r["load"] + r.get("multicast", 0)
    assert c["writes_done"] == r["store"]
    # flits: each packet leaves the NoC once, a multicast response once per destination
    if stats.dma_requests.get("multicast", 0) == 0:
        assert stats.noc_injected_flits == stats.noc_ejected_flits > 0
    else:
        assert stats.noc_ejected_flits > stats.noc_injected_flits > 0
    # SRAM: every byte a DMA moved in or out, plus what the engines read and wrote
    tabs = chip.instruction_tables(prog, config.load(EXAMPLES.get(prog.name, "teach-4x4")))
    assert int(stats.sram_read_bytes.sum()) == int(tabs["s_read"].sum()) + store + copy
    assert int(stats.sram_write_bytes.sum()) == int(tabs["s_write"].sum()) + load_written + copy
    # every instruction issued, started and completed once, in that order
    assert (stats.t_issue >= 0).all()
    assert (stats.t_issue <= stats.t_start).all() and (stats.t_start <= stats.t_end).all()
    assert stats.cycles == stats.t_end.max()
    # MACs = sum of m * k * n over the program's MMs
    mm = ins["op"] == Op.MM
    assert sum(stats.macs.values()) == int((ins["m"][mm].astype(np.int64) * ins["k"][mm]
                                            * ins["n"][mm]).sum())
    # busy cycles never exceed the run
    assert (stats.engine_busy <= stats.cycles).all()


@pytest.mark.parametrize("name", EXAMPLES)
def test_conservation(example_runs, name):
    prog, stats, a, b = example_runs[name]
    _check_conservation(prog, stats)
    assert stats.macs == {"int8": a.shape[0] * a.shape[1] * b.shape[1]}


def test_two_core_copy_crosses_the_noc(example_runs):
    prog, stats, _, _ = example_runs["gemm_two_core"]
    assert stats.dma_requests["copy"] > 0
    # 16 x 4 int32 = 256 contiguous bytes on both sides: the descriptor coalesces into one run,
    # cut into requests of request_bytes
    per = config.load("teach-2core").cores.dma.request_bytes
    assert stats.dma_requests["copy"] == 256 // per


def test_energy_is_counts_times_the_table(example_runs):
    _, stats, a, b = example_runs["gemm_double_buffered"]
    t = stats.energy_table
    assert stats.energy_pj["mac"] == pytest.approx(16 * 16 * 4 * t["mac_int8_pj"])
    assert stats.energy_pj["sram"] == pytest.approx(
        stats.sram_read_bytes.sum() * t["sram_read_pj_per_byte"]
        + stats.sram_write_bytes.sum() * t["sram_write_pj_per_byte"])
    assert stats.energy_pj["dram"] == pytest.approx(stats.dram["energy_pj"])
    # NoC: teach-4x4 has the core and the memory controller one link apart, so every packet
    # makes one hop: a load is a control packet out and its data back, a store its data out
    # and a control packet back. Energy is per byte carried, not per link width.
    from tilesim.arch._engine import NOC_CTRL_BYTES
    reqs = stats.dma_requests["load"] + stats.dma_requests["store"]
    assert stats.noc_byte_hops == (reqs * NOC_CTRL_BYTES + stats.dram_read_bytes
                                   + stats.dram_write_bytes)
    assert stats.energy_pj["noc"] == pytest.approx(stats.noc_byte_hops * t["noc_pj_per_byte_hop"])
    assert all(v >= 0 for v in stats.energy_pj.values())


def test_dram_bandwidth_bounds_a_memory_bound_run():
    """No run moves DRAM bytes faster than the standard's peak."""
    cfg = config.load("teach-4x4")
    prog = assemble(gemm_tile_loop(256, 256, 4, 4, 2, a_tiled=True), "big")
    stats = chip.run(prog, cfg)
    peak_bytes_per_cycle = stats.dram["peak_gbps"] / cfg.clock_ghz
    assert stats.cycles >= (stats.dram_read_bytes + stats.dram_write_bytes) / peak_bytes_per_cycle
    _check_conservation(prog, stats)


# ---- determinism --------------------------------------------------------------------------


def test_determinism(example_runs):
    prog, first, _, _ = example_runs["gemm_two_core"]
    again = chip.run(prog, config.load("teach-2core"))
    assert again.same_timing(first)
    assert again.energy_pj == first.energy_pj


# ---- bank conflicts -----------------------------------------------------------------------


def _copy_program(dst_offset: int) -> str:
    """One vector copy of a 64 x 16 int8 tile whose rows sit in bank 0 only (row stride =
    banks x bank width = 64), written to bank 0 (offset 0) or bank 1 (offset 16)."""
    return f"""
.program bank_test cores=1 dma_engines=1
.queue core=0 engine=vector
    copy src=0x0 dst={0x1000 + dst_offset} shape=64,16 src_stride=64,1 dst_stride=64,1 dtype=int8 dtype2=int8
"""


def test_bank_conflict_costs_cycles():
    """Lanes want 64 B/cycle in and out; one 16-byte bank gives 16 B/cycle. Reading bank 0 and
    writing bank 1, each stream gets its bank: 1024 bytes / 16 = 64 cycles. Reading and
    writing bank 0, the two share it: 2048 / 16 = 128 cycles. Plus the op's latency."""
    d = config.to_dict(config.load("teach-4x4"))
    d["cores"]["vector"]["lanes"] = 64
    cfg = config.from_dict(d)
    lat = cfg.cores.vector.ops["copy"].latency_cycles
    apart = chip.run(assemble(_copy_program(16), "apart"), cfg)
    same = chip.run(assemble(_copy_program(0), "same"), cfg)
    assert apart.cycles == pytest.approx(64 + lat, abs=1)
    assert same.cycles == pytest.approx(128 + lat, abs=1)


# ---- errors -------------------------------------------------------------------------------


def test_planted_deadlock_names_every_blocked_instruction():
    text = path("gemm_double_buffered").read_text().replace(
        "ldw wait=full1>=4", "ldw wait=full1>=5")
    prog = assemble(text, "deadlock.tasm")
    with pytest.raises(ProgramError) as e:
        chip.run(prog, config.load("teach-4x4"), validate=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("deadlock")
    assert "matrix" in msg and "full1 (at 4, needs 5)" in msg
    assert "dma1" in msg and "done (at 0, needs 1)" in msg
    # the static validator catches it too, also in one line
    with pytest.raises(ProgramError) as e:
        chip.run(prog, config.load("teach-4x4"))
    assert "\n" not in str(e.value) and "full1>=5" in str(e.value)


@pytest.mark.parametrize("field,value,reason", [
    ("dst=a0 shape=16,4", "dst=0xfff0 shape=16,4", "SRAM outside [0, 65536)"),
    ("src=A    dst=a0", "src=0x3ffffff0 dst=a0", "DRAM outside [0, 1073741824)"),
])
def test_planted_out_of_bounds_address(field, value, reason):
    text = path("gemm_double_buffered").read_text().replace(field, value, 1)
    prog = assemble(text, "oob.tasm")
    with pytest.raises(ProgramError) as e:
        chip.run(prog, config.load("teach-4x4"), validate=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("oob.tasm: line ") and "dma0 instruction 0" in msg and reason in msg


def test_event_budget_names_the_program_not_an_instruction():
    prog = _program("gemm_double_buffered")
    with pytest.raises(ProgramError) as e:
        chip.run(prog, config.load("teach-4x4"), max_events=50)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{prog.name}: the run exceeded its event budget (50 events)")


# ---- DMA descriptors ----------------------------------------------------------------------


def test_coalesce_keeps_every_byte_and_its_order():
    """Folding contiguous dimensions changes how many runs a descriptor has, never which
    bytes it moves or where they go (checked byte by byte on random descriptors)."""
    from tilesim.isa.opcodes import INSTR_DTYPE

    rng = np.random.default_rng(7)
    recs = np.zeros(400, INSTR_DTYPE)
    recs["op"] = Op.LOAD
    recs["dtype"] = rng.choice([DTYPES[n].code for n in ("int8", "bf16", "fp32")], 400)
    for r in recs:
        eb = chip._BITS[r["dtype"]] // 8
        shape = rng.integers(1, 5, 4)
        r["shape"] = shape
        for side in ("src_stride", "dst_stride"):
            inner = eb if rng.random() < 0.8 else 2 * eb
            st = [0, 0, 0, inner]
            for d in (2, 1, 0):   # contiguous or padded, at random
                st[d] = st[d + 1] * shape[d + 1] + (0 if rng.random() < 0.6 else eb)
            r[side] = st
    out = dma.coalesce(recs, chip._BITS)
    folded = 0
    for a, b in zip(recs, out):
        eb = chip._BITS[a["dtype"]] // 8
        for side in ("src_stride", "dst_stride"):
            before = chip._offsets(0, a["shape"], a[side])[..., None] + np.arange(eb)
            after = chip._offsets(0, b["shape"], b[side])[..., None] + np.arange(eb)
            np.testing.assert_array_equal(before.reshape(-1), after.reshape(-1))
        folded += int(np.count_nonzero(b["shape"] == 1) > np.count_nonzero(a["shape"] == 1))
    assert folded > 50
    assert (dma.descriptor_bytes(out, chip._BITS) == dma.descriptor_bytes(recs, chip._BITS)).all()
    # folded descriptors, even with junk strides on extent-1 dimensions, are not copied
    again = out.copy()
    again["src_stride"][:, 0] = np.where(again["shape"][:, 0] <= 1, 999,
                                         again["src_stride"][:, 0])
    assert dma.coalesce(again, chip._BITS) is again
    assert dma.coalesce(recs, chip._BITS) is not recs


@pytest.mark.parametrize("inputs,fragment", [
    ({"a": np.zeros((16, 16))}, "did you mean 'A'?"),
    ({"A": np.zeros(300)}, "has 300 values"),
    ({"A": np.full((16, 16), 1000)}, "-128..127"),
])
def test_bad_functional_inputs_are_one_line_input_errors(inputs, fragment):
    """The Python API checks inputs before the timed run: an unknown buffer, a wrong element
    count (which would silently overwrite the next buffer) or unrepresentable values."""
    from tilesim.errors import InputError
    with pytest.raises(InputError) as e:
        chip.run(_program("gemm_double_buffered"), config.load("teach-4x4"), functional=True,
                 inputs=inputs)
    assert "\n" not in str(e.value) and fragment in str(e.value)


def test_unique_rows_equals_numpy_unique():
    """chip._unique_rows (a lexsort) groups rows exactly as np.unique(axis=0) does."""
    rng = np.random.default_rng(7)
    keys = rng.integers(-3, 4, (2000, 5)).astype(np.int64)
    uniq, inv = chip._unique_rows(keys)
    ref, ref_inv = np.unique(keys, axis=0, return_inverse=True)
    assert np.array_equal(uniq[inv], keys)
    assert sorted(map(tuple, uniq)) == sorted(map(tuple, ref))
    # same grouping: two rows share a group in one exactly when they do in the other
    assert np.array_equal(inv[:, None] == inv[None, :200], ref_inv.ravel()[:, None]
                          == ref_inv.ravel()[None, :200])


# ---- multicast loads ----------------------------------------------------------------------

MCAST_BYTES = 64 * 64


def _mcast_chip():
    """tpu-v4i-like (4 cores on a 3 x 2 mesh, two memory nodes) allowed to multicast to all."""
    d = config.to_dict(config.load("tpu-v4i-like"))
    d["cores"]["dma"]["multicast_cores"] = 4
    return config.from_dict(d)


def _multicast_program(first: int, count: int, stride: int, cores: int = 4) -> str:
    """Core 0's dma0 multicasts B (64 x 64 int8 in DRAM) to address 0x1000 of the cores
    first + j * stride, j < count; every core declares a buffer there to read back."""
    bufs = "\n".join(f".buffer s{c} space=sram core={c} addr=0x1000 dtype=int8 shape=64,64"
                     for c in range(cores))
    return f"""
.program mcast cores={cores} dma_engines=1
.sem got
.buffer B space=dram addr=0x0 dtype=int8 shape=64,64
{bufs}
.queue core=0 engine=dma0
    load src=B dst=s{first} dst_core={first} mc_count={count} mc_stride={stride} shape=64,64 src_stride=64,1 dst_stride=64,1 dtype=int8 signal=got
"""


def test_multicast_load_writes_every_destination_from_one_dram_read():
    """One DRAM read per request, one SRAM write per destination, nothing on the issuer; and the
    NoC carries each response once along the chain memory node -> d0 -> d1 -> d2:
    byte-hops = sum over requests of 16 x hops(core 0, channel node)
    + bytes x (hops(channel node, d0) + hops(d0, d1) + hops(d1, d2))."""
    from tilesim.arch import _engine, noc as noc_mod
    cfg = _mcast_chip()
    prog = assemble(_multicast_program(1, 3, 1), "mcast")
    b = np.random.default_rng(7).integers(-128, 128, (64, 64))
    stats = chip.run(prog, cfg, functional=True, inputs={"B": b})
    for c in (1, 2, 3):
        np.testing.assert_array_equal(stats.memory.read(f"s{c}"), b)
    assert not stats.memory.read("s0").any()
    assert stats.dram_read_bytes == MCAST_BYTES and stats.dram_write_bytes == 0
    assert list(stats.sram_write_bytes) == [0, MCAST_BYTES, MCAST_BYTES, MCAST_BYTES]
    per = cfg.cores.dma.request_bytes
    assert stats.dma_requests == {"load": 0, "store": 0, "copy": 0,
                                  "multicast": MCAST_BYTES // per}
    tables = noc_mod.build(cfg.noc)
    nodes = cfg.core_nodes
    mem = chip.MemorySide(cfg, 16)
    chain = sum(int(tables.hops[nodes[c], nodes[c + 1]]) for c in (1, 2))
    want = 0
    for addr in range(0, MCAST_BYTES, per):
        ch_node = int(mem.ch_node[_engine.dram_channel(mem.T, addr)])
        want += (_engine.NOC_CTRL_BYTES * int(tables.hops[nodes[0], ch_node])
                 + per * (int(tables.hops[ch_node, nodes[1]]) + chain))
    assert stats.noc_byte_hops == want
    # two extra copies of every response leave the NoC
    flits = -(-per // cfg.noc.link_width_bytes)
    assert stats.noc_ejected_flits - stats.noc_injected_flits == 2 * (MCAST_BYTES // per) * flits
    _check_conservation(prog, stats)


def test_multicast_signals_after_the_last_destination_and_costs_less_dram_than_loads():
    """The load completes (and signals) when the last copy is in: visiting four cores ends
    later than delivering to the first one alone, though both read DRAM alike. Four plain loads
    of the same tile read DRAM four times and take longer on the same chip."""
    cfg = _mcast_chip()
    mc = chip.run(assemble(_multicast_program(0, 4, 1), "mcast"), cfg)
    one = chip.run(assemble(_multicast_program(0, 1, 1), "mcast1"), cfg)
    assert one.dram_read_bytes == mc.dram_read_bytes
    assert list(one.sram_write_bytes) == [MCAST_BYTES, 0, 0, 0]
    assert mc.t_end[0] > one.t_end[0]
    loads = "\n".join(
        f".queue core={c} engine=dma0\n    load src=B dst=s{c} shape=64,64 src_stride=64,1 "
        f"dst_stride=64,1 dtype=int8 signal=got" for c in range(4))
    text = _multicast_program(0, 4, 1).split(".queue")[0] + loads
    sep = chip.run(assemble(text, "loads"), cfg)
    assert sep.dram_read_bytes == 4 * mc.dram_read_bytes
    assert mc.cycles < sep.cycles


def test_multicast_with_a_stride_and_bad_destinations():
    from tilesim.isa import disassemble
    cfg = _mcast_chip()
    prog = assemble(_multicast_program(1, 2, 2), "mcast")
    text = disassemble(prog)
    assert "dst_core=1 mc_count=2 mc_stride=2 dst=s1" in text
    assert assemble(text, "again") == prog
    stats = chip.run(prog, cfg)
    assert list(stats.sram_write_bytes) == [0, MCAST_BYTES, 0, MCAST_BYTES]
    for first, count, stride, needle in ((2, 3, 1, "cores 2 + j * 1, j < 3"),
                                         (1, 2, 0, "mc_stride >= 1")):
        with pytest.raises(ProgramError) as e:
            chip.run(assemble(_multicast_program(first, count, stride), "bad"), cfg)
        assert "\n" not in str(e.value) and needle in str(e.value)
        # the event loop refuses it too when the validator is skipped
        with pytest.raises(ProgramError, match="loads to a core that does not exist"):
            chip.run(assemble(_multicast_program(first, count, stride), "bad"), cfg,
                     validate=False)
    # a chip that cannot multicast that far refuses it before the run
    with pytest.raises(ProgramError, match="at most cores.dma.multicast_cores = 1"):
        chip.run(prog, config.load("tpu-v4i-like"))
