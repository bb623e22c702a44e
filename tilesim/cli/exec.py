"""`tilesim exec`: run a tile program on a chip, cycle by cycle, and summarise what happened.

Prints cycles and time, instructions, every engine's busy cycles and utilisation (busy / total
cycles), DMA requests, DRAM bytes and achieved bandwidth against the memory's peak, NoC flits
and flit-hops, MACs by datatype with the array utilisation they imply, and energy by component
(with the per-action table it came from under --json). ``--timeline`` draws the Gantt chart of
every engine (tilesim/report/timeline.py).

Functional runs take their input values from .npy files by buffer name (``--input A=a.npy``);
a buffer not given starts as zeros. ``--output C`` prints a buffer's values after the run.
"""
from __future__ import annotations

import time

import numpy as np

from tilesim.cli import print_json, read_text
from tilesim.errors import InputError

MAX_CORE_ROWS = 16
"""The text summary lists engines core by core for at most this many cores, then aggregates."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "exec", help="run a tile program (.tasm or .npz) on a chip and summarise it",
        description="Assemble a tile program, run it cycle by cycle on a chip config and print "
                    "cycles, engine utilisation, DMA, DRAM and NoC traffic, MACs and energy.")
    p.add_argument("file", metavar="FILE.tasm", help="tile assembly (or a .npz from tilesim asm)")
    p.add_argument("--config", required=True, metavar="CHIP",
                   help="chip config file or preset name (e.g. teach-4x4)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--timeline", metavar="FILE.png",
                   help="write a Gantt chart of every engine of every core to a PNG")
    p.add_argument("--functional", action="store_true",
                   help="also compute real values (small programs): SRAM and DRAM hold data")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="functional mode: fill buffer NAME from a .npy file (repeatable); "
                        "buffers not given start as zeros")
    p.add_argument("--output", action="append", default=[], metavar="NAME",
                   help="functional mode: print buffer NAME after the run (repeatable)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# Arguments -> program, config, inputs
# --------------------------------------------------------------------------------------------


def load_program(path: str):
    """A Program from .tasm text (AsmError names file and line) or a .npz program file."""
    from tilesim.isa import assemble
    from tilesim.isa.program import Program

    if path.endswith(".npz"):
        return Program.load(path)
    return assemble(read_text(path), path)


def read_inputs(specs: list[str], program) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` arguments -> buffer name -> values, checked against the buffers.

    Every problem (malformed argument, unknown buffer, unreadable file, wrong element count,
    values the buffer's datatype cannot hold) is collected and raised as one InputError."""
    from tilesim.arch import chip

    values: dict[str, np.ndarray] = {}
    problems: list[str] = []
    names = [b.name for b in program.buffers]
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            problems.append(f"{spec!r} is not NAME=FILE.npy")
            continue
        if name not in names:
            problems.append(chip.unknown_buffer(name, program))
            continue
        if name in values:
            problems.append(f"{name!r} is given twice")
            continue
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            why = "no such file" if isinstance(e, FileNotFoundError) else \
                f"not a .npy array: {e.__class__.__name__}: {e}"
            problems.append(f"{path}: cannot read ({why})")
            continue
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            problems.append(f"{path}: holds {getattr(arr, 'dtype', type(arr))} values, not "
                            f"numbers")
            continue
        why = chip.input_problem(program, name, arr)
        if why:
            problems.append(f"{path}: {why}")
            continue
        values[name] = arr
    if problems:
        raise InputError("--input: " + "; ".join(problems))
    return values


def loaded_buffers(program) -> list[str]:
    """Names of the DRAM buffers that some LOAD reads from (the program's inputs)."""
    from tilesim.isa.opcodes import Op

    src = program.instrs["src_addr"][program.instrs["op"] == Op.LOAD]
    return [b.name for b in program.buffers if b.space == "dram"
            and np.any((src >= b.addr) & (src < b.end))]


def check_outputs(names: list[str], program) -> None:
    from tilesim.arch import chip

    bad = [chip.unknown_buffer(n, program) for n in names if n not in
           {b.name for b in program.buffers}]
    if bad:
        raise InputError("--output: " + "; ".join(bad))


# --------------------------------------------------------------------------------------------
# RunStats -> a plain summary
# --------------------------------------------------------------------------------------------


def summary(stats, program, cfg) -> dict:
    """Everything the report prints, as JSON-ready plain data (times in cycles and seconds,
    traffic in bytes, energy in pJ)."""
    from tilesim.isa.opcodes import engine_name

    cycles = int(stats.cycles)
    n_e = program.engines_per_core
    names = [engine_name(e) for e in range(n_e)]
    busy = [{names[e]: int(stats.engine_busy[c, e]) for e in range(n_e)}
            for c in range(program.n_cores)]
    util = [{k: (v / cycles if cycles else 0.0) for k, v in row.items()} for row in busy]
    seconds = float(stats.seconds)
    dram = stats.dram or {}
    dram_bytes = stats.dram_read_bytes + stats.dram_write_bytes
    gbps = dram_bytes / seconds / 1e9 if seconds > 0 else 0.0
    peak = dram.get("peak_gbps")
    sa = cfg.cores.systolic
    total_macs = sum(stats.macs.values())
    peak_macs = program.n_cores * sa.rows * sa.cols * cycles
    energy = {k: float(v) for k, v in stats.energy_pj.items()}
    e_total = sum(energy.values())
    return {
        "program": program.name, "source": program.source or None, "chip": cfg.name,
        "cores": program.n_cores, "clock_ghz": cfg.clock_ghz,
        "cycles": cycles, "seconds": seconds,
        "instructions": int(stats.instructions),
        "instructions_per_engine": [{names[e]: int(program.queue_len[c, e]) for e in range(n_e)}
                                    for c in range(program.n_cores)],
        "engine_busy": busy, "engine_utilisation": util,
        "dma_requests": dict(stats.dma_requests),
        "sram_read_bytes": [int(x) for x in stats.sram_read_bytes],
        "sram_write_bytes": [int(x) for x in stats.sram_write_bytes],
        "dram_standard": dram.get("standard"), "dram_channels": dram.get("channels", 0),
        "dram_read_bytes": int(stats.dram_read_bytes),
        "dram_write_bytes": int(stats.dram_write_bytes),
        "dram_gbps": gbps, "dram_peak_gbps": peak,
        "dram_percent_of_peak": (100 * gbps / peak) if peak else None,
        "dram_commands": dict(dram.get("counters", {})),
        "noc_injected_flits": int(stats.noc_injected_flits),
        "noc_ejected_flits": int(stats.noc_ejected_flits),
        "noc_flit_hops": int(stats.noc_flit_hops),
        "macs": {k: int(v) for k, v in stats.macs.items()},
        "mac_utilisation": total_macs / peak_macs if peak_macs else 0.0,
        "vector_ops": {k: int(v) for k, v in stats.vector_ops.items()},
        "energy_pj": energy, "energy_total_pj": e_total,
        "energy_percent": {k: (100 * v / e_total if e_total else 0.0) for k, v in energy.items()},
        "energy_table": dict(stats.energy_table),
    }


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _pj(x: float) -> str:
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if x >= scale:
            return f"{x / scale:.4g} {unit}"
    return f"{x:.4g} pJ"


def print_summary(s: dict) -> None:
    cyc = s["cycles"]
    print(f"{s['program']} on {s['chip']}: {s['instructions']} instructions on {s['cores']} "
          f"core(s)")
    print(f"  cycles       {cyc} at {s['clock_ghz']:g} GHz = {_time(s['seconds'])}")
    print("  engines      busy cycles (utilisation = busy / cycles)")
    rows = s["engine_busy"]
    for c, row in enumerate(rows[:MAX_CORE_ROWS]):
        used = [(k, v) for k, v in row.items() if s["instructions_per_engine"][c][k]]
        text = "  ".join(f"{k} {v} ({100 * v / cyc if cyc else 0:.1f} %)" for k, v in used)
        print(f"    core {c:<4} {text or 'idle'}")
    if len(rows) > MAX_CORE_ROWS:
        rest = rows[MAX_CORE_ROWS:]
        parts = []
        for k in rest[0]:
            vals = [r[k] for r in rest]
            mean = sum(vals) / len(vals)
            parts.append(f"{k} mean {mean:.0f} ({100 * mean / cyc if cyc else 0:.1f} %)")
        print(f"    cores {MAX_CORE_ROWS}-{len(rows) - 1}: " + "  ".join(parts))
    d = s["dma_requests"]
    print(f"  DMA requests load {d['load']}, store {d['store']}, copy {d['copy']}, "
          f"multicast {d['multicast']}")
    if s["dram_standard"]:
        print(f"  DRAM         read {_bytes(s['dram_read_bytes'])}, written "
              f"{_bytes(s['dram_write_bytes'])}: {s['dram_gbps']:.2f} GB/s over the run = "
              f"{s['dram_percent_of_peak']:.1f} % of {s['dram_peak_gbps']:.1f} GB/s peak "
              f"({s['dram_standard']}, {s['dram_channels']} channel"
              f"{'s' if s['dram_channels'] != 1 else ''})")
        c = s["dram_commands"]
        print(f"               ACT {c['ACT']}  PRE {c['PRE']}  RD {c['RD']}  WR {c['WR']}  "
              f"REF {c['REF']}  row hits {c['row_hits']}, misses {c['row_misses']}, "
              f"conflicts {c['row_conflicts']}")
    else:
        print("  DRAM         none (SRAM-only chip)")
    print(f"  SRAM         read {_bytes(sum(s['sram_read_bytes']))}, written "
          f"{_bytes(sum(s['sram_write_bytes']))}")
    print(f"  NoC          {s['noc_injected_flits']} flits injected, {s['noc_ejected_flits']} "
          f"ejected, {s['noc_flit_hops']} flit-hops")
    macs = ", ".join(f"{k} {v}" for k, v in s["macs"].items()) or "none"
    print(f"  MACs         {macs}  (array utilisation {100 * s['mac_utilisation']:.1f} % of "
          f"{s['cores']} core(s) x cycles)")
    if s["vector_ops"]:
        print("  vector ops   " + ", ".join(f"{k} {v}" for k, v in s["vector_ops"].items())
              + " elements")
    print(f"  energy       {_pj(s['energy_total_pj'])}")
    for k, v in s["energy_pj"].items():
        if k == "static" and not v and not s["energy_table"].get("static_mw_per_core"):
            print(f"    {k:<10} not modelled (no static_mw_per_core in the energy table)")
            continue
        print(f"    {k:<10} {_pj(v):>12}  {s['energy_percent'][k]:5.1f} %")


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def run(args) -> int:
    from tilesim import config
    from tilesim.arch import chip

    if (args.input or args.output) and not args.functional:
        flag = "--input" if args.input else "--output"
        raise InputError(f"{flag}: needs --functional (values exist only in a functional run)")
    if args.timeline:
        import os
        folder = os.path.dirname(os.path.abspath(args.timeline))
        if not os.path.isdir(folder):
            raise InputError(f"--timeline: {args.timeline}: no such folder {folder}")
    program = load_program(args.file)
    cfg = config.load(args.config)
    inputs = read_inputs(args.input, program)
    check_outputs(args.output, program)
    t0 = time.perf_counter()
    stats = chip.run(program, cfg, functional=args.functional, inputs=inputs)
    wall = time.perf_counter() - t0
    s = summary(stats, program, cfg)
    s["sim_wall_s"] = wall
    zeros = [n for n in loaded_buffers(program) if n not in inputs]
    if args.functional:
        s["inputs"] = sorted(inputs)
        s["inputs_zero"] = zeros
        s["outputs"] = {n: stats.memory.read(n).tolist() for n in args.output}
    if args.timeline:
        from tilesim.report.timeline import plot_timeline
        plot_timeline(stats, program, args.timeline)
        s["timeline"] = args.timeline
    if args.json:
        print_json(s)
        return 0
    print_summary(s)
    if args.functional:
        print(f"  functional   inputs: {', '.join(sorted(inputs)) or 'none'}"
              + (f"; loaded from DRAM but not given (zeros): {', '.join(zeros)}"
                 if zeros else ""))
        for n in args.output:
            v = stats.memory.read(n)
            b = program.buffer(n)
            print(f"{n} ({b.dtype}, shape {tuple(b.shape)}) =")
            print(np.array2string(v, max_line_width=120, threshold=1000))
    if args.timeline:
        print(f"  timeline     {args.timeline}")
    print(f"  simulated in {wall:.3f} s")
    return 0
