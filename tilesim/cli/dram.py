"""`tilesim dram`: run a synthetic pattern through the cycle-level DRAM model and report it.

Reports achieved bandwidth (GB/s and % of peak), read latency (mean, p50, p99 in ns and
cycles), row-buffer hit rate, energy per bit (with the cited figure it is calibrated to) and,
with ``--plot``, bandwidth over time. The memory is a standard (``--standard``, ``--devices``,
``--rate``) or a chip config's ``memory`` block (``--config``).
"""
from __future__ import annotations

import os
import sys
import tempfile

from tilesim.cli import print_json
from tilesim.errors import ConfigError, InputError

MAX_REQUESTS = 1 << 24
"""Requests one run may simulate (the trace arrays take about 100 bytes per request)."""


def add_parser(sub) -> None:
    from tilesim.arch.dram.patterns import PATTERNS

    d = sub.add_parser("dram", help="simulate a DRAM standard on a synthetic access pattern",
                       description="Run a stream, random or strided pattern through the "
                                   "cycle-level DRAM model (banks, row buffers, JEDEC timing, "
                                   "refresh, FR-FCFS) and report bandwidth, latency, row hits "
                                   "and energy.")
    d.add_argument("--standard", metavar="NAME",
                   help="ddr3, hbm2, hbm2e, hbm3, gddr6 (or hbm2_dramsim3, DRAMsim3's HBM2 "
                        "organisation); default hbm3")
    d.add_argument("--config", metavar="CHIP", help="take the memory block of this chip config")
    d.add_argument("--devices", type=int, help="stacks / chips / DDR channels (default 1)")
    d.add_argument("--rate", type=float, metavar="GBPS", help="per-pin data rate, Gb/s")
    d.add_argument("--pattern", default="stream", metavar="|".join(PATTERNS),
                   help="access pattern (default stream)")
    d.add_argument("--bytes", default="64 MiB", metavar="N",
                   help="bytes to move, e.g. 1048576 or '64 MiB' (default 64 MiB)")
    d.add_argument("--request-bytes", default="64", metavar="N",
                   help="bytes per request (default 64)")
    d.add_argument("--read-fraction", type=float, default=1.0, metavar="F",
                   help="share of requests that are reads, 0..1 (default 1)")
    d.add_argument("--stride", default=None, metavar="N",
                   help="bytes between requests for --pattern strided (default: one row of "
                        "every bank of every channel, the same bank each time)")
    d.add_argument("--interval", type=int, default=0, metavar="CYCLES",
                   help="DRAM cycles between request arrivals (default 0: all at once, "
                        "closed loop with back-pressure)")
    d.add_argument("--page-policy", choices=("open", "closed"), help="row-buffer policy")
    d.add_argument("--seed", type=int, default=0, help="seed of the random pattern")
    d.add_argument("--json", action="store_true", help="print the results as JSON")
    d.add_argument("--plot", metavar="FILE.png", help="write bandwidth over time to a PNG")
    d.set_defaults(func=run)


def _size(flag: str, text) -> int:
    from tilesim.config import parse_size

    t = str(text).strip()
    neg = t.startswith("-")
    try:
        value = parse_size(int(t) if t.lstrip("-").isdigit() else t.lstrip("-"))
    except ValueError as e:
        raise InputError(f"{flag}: {text!r} is not allowed ({e})") from None
    if neg or value < 1:
        raise InputError(f"{flag}: {text} is not allowed (a size of at least 1 byte)")
    return value


def memory_config(args):
    """The MemoryConfig the arguments describe (a chip's, or built from the flags)."""
    import dataclasses

    from tilesim import config
    from tilesim.arch.dram import model
    from tilesim.arch.dram.compile import lookup

    if args.devices is not None and args.devices < 1:
        raise InputError(f"--devices: {args.devices} is not allowed (at least 1 device)")
    if args.config:
        if args.standard:
            raise InputError("--standard: not allowed with --config (the chip config names "
                             "its memory standard)")
        chip = config.load(args.config)
        if chip.memory is None:
            raise InputError(f"--config: {args.config} has no off-chip memory (memory: none)")
        mem = chip.memory
        if args.devices is not None:
            mem = dataclasses.replace(mem, devices=args.devices)
        if args.rate is not None:
            mem = dataclasses.replace(mem, data_rate_gbps=args.rate)
    else:
        try:
            lookup(args.standard or "hbm3")
        except ConfigError as e:
            raise InputError(f"--{e}") from None
        mem = model.memory(args.standard or "hbm3", args.devices or 1, args.rate or 0.0)
    if args.page_policy:
        mem = dataclasses.replace(mem, controller=dataclasses.replace(
            mem.controller, page_policy=args.page_policy))
    return mem


def run(args) -> int:
    from tilesim.arch.dram import model, patterns

    if args.pattern not in patterns.PATTERNS:
        import difflib
        hint = difflib.get_close_matches(args.pattern, patterns.PATTERNS, n=1)
        raise InputError(f"--pattern: {args.pattern!r} is not allowed (one of "
                         f"{', '.join(patterns.PATTERNS)}"
                         + (f"; did you mean {hint[0]!r}?" if hint else "") + ")")
    if not 0.0 <= args.read_fraction <= 1.0:
        raise InputError(f"--read-fraction: {args.read_fraction} is not allowed (a fraction "
                         f"from 0 to 1)")
    if args.interval < 0:
        raise InputError(f"--interval: {args.interval} is not allowed (cycles >= 0)")
    total = _size("--bytes", args.bytes)
    req = _size("--request-bytes", args.request_bytes)
    mem = memory_config(args)
    try:
        system = model.build(mem)
    except ConfigError as e:
        raise InputError(f"memory: {e}") from None
    chunk = system.chunk_bytes
    if req > chunk or chunk % req:
        raise InputError(f"--request-bytes: {req} is not allowed (a divisor of {chunk}, the "
                         f"bytes {system.std.name}'s address mapping keeps in one row)")
    n = total // req
    if n < 1:
        raise InputError(f"--bytes: {total} is not allowed (at least one request of {req} B)")
    if n > MAX_REQUESTS:
        raise InputError(f"--bytes: {total} is not allowed (at most {MAX_REQUESTS} requests "
                         f"of {req} B = {MAX_REQUESTS * req} bytes per run)")
    capacity = system.n_channels * system.std.channel_bytes
    stride = (_size("--stride", args.stride) if args.stride is not None
              else system.std.row_bytes * system.std.banks * system.n_channels)
    if stride % req:
        raise InputError(f"--stride: {stride} is not allowed (a multiple of --request-bytes "
                         f"{req})")
    addr, is_write = patterns.make(args.pattern, n, req, capacity, args.read_fraction,
                                   stride=stride, seed=args.seed)
    arrival = None
    if args.interval:
        import numpy as np
        arrival = np.arange(n, dtype=np.int64) * args.interval
    result = model.simulate(system, addr, req, is_write, arrival)
    summary = result.summary()
    summary.update({"pattern": args.pattern, "request_bytes": req,
                    "read_fraction": args.read_fraction,
                    "interval_cycles": args.interval,
                    "energy_target_pj_per_bit": system.std.energy.target_pj_per_bit,
                    "energy_target_source": system.std.energy.target_source,
                    "energy_table": result.energy()["table"]})
    if args.plot:
        _plot(result, args.plot)
        summary["plot"] = args.plot
    if args.json:
        print_json(summary)
    else:
        _print(summary)
    return 0


def _print(s: dict) -> None:
    reads = 100 * s["reads"] / max(1, s["requests"])
    print(f"{s['standard']} x{s['devices']}: {s['channels']} channels at "
          f"{s['data_rate_gbps']:g} Gb/s, peak {s['peak_gbps']:.1f} GB/s; {s['pattern']}, "
          f"{s['requests']} requests of {s['request_bytes']} B, {reads:.0f} % reads")
    print(f"  bandwidth      {s['bandwidth_gbps']:10.2f} GB/s  ({s['percent_of_peak']:.1f} % "
          f"of peak) over {s['time_ns']:.0f} ns")
    print(f"  read latency   mean {s['read_latency_ns_mean']:.1f} ns "
          f"({s['read_latency_cycles_mean']:.1f} cycles), p50 {s['read_latency_ns_p50']:.1f} "
          f"ns ({s['read_latency_cycles_p50']:.0f}), p99 {s['read_latency_ns_p99']:.1f} ns "
          f"({s['read_latency_cycles_p99']:.0f})")
    print(f"  row-buffer hit {100 * s['row_hit_rate']:10.1f} %")
    print(f"  energy         {s['energy_pj_per_bit']:10.3f} pJ/bit  (I/O term calibrated to "
          f"{s['energy_target_pj_per_bit']} pJ/bit on streaming reads)")
    c = s["commands"]
    print(f"  commands       ACT {c['ACT']}  PRE {c['PRE']}  RD {c['RD']}  WR {c['WR']}  "
          f"REF {c['REF']}")
    rate = s["sim_requests_per_s"]
    print(f"  simulated in {s['sim_wall_s']:.3f} s"
          + (f" ({rate / 1e6:.2f} M requests/s)" if rate else ""))
    if s.get("plot"):
        print(f"  plot           {s['plot']}")


def _plot(result, path: str) -> None:
    """Bandwidth over time, written atomically (a temporary file renamed into place)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, gbps = result.bandwidth_over_time(bins=min(100, max(10, len(result.addr) // 64)))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(x / 1e3, gbps, drawstyle="steps-mid", label="achieved")
    ax.axhline(result.system.peak_gbps, color="grey", linestyle="--", label="peak")
    ax.set_xlabel("time (us)")
    ax.set_ylabel("GB/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result.system.std.name} x{result.system.mem.devices}: bandwidth over time",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
        os.close(fd)
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"--plot: cannot write {path} ({e.__class__.__name__}: {e})") from None
    finally:
        plt.close(fig)
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
    sys.stdout.flush()
