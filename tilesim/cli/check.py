"""`tilesim check`: validate chip configs and print a one-line summary of each."""
from __future__ import annotations

import sys

from tilesim.cli import EXIT_USAGE, print_json
from tilesim.errors import TilesimError


def add_parser(sub) -> None:
    c = sub.add_parser("check", help="validate chip configs and summarise them",
                       description="Validate chip configs (all presets when none are named).")
    c.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML file or preset name")
    c.add_argument("--json", action="store_true", help="print the summaries as JSON")
    c.add_argument("--schema", action="store_true",
                   help="print every config key with its default and meaning")
    c.set_defaults(func=run)


def summary(cfg) -> dict:
    """The headline numbers of a chip config, as plain data."""
    from tilesim.arch import dram
    from tilesim.config import format_size

    s = cfg.cores.systolic
    mem = cfg.memory
    return {
        "config": cfg.source,
        "name": cfg.name,
        "cores": cfg.cores.count,
        "array": f"{s.rows}x{s.cols} {s.dataflow} {s.input_dtype}",
        "clock_ghz": cfg.clock_ghz,
        "peak_tflops": round(cfg.peak_tflops, 3),
        "sram_bytes": cfg.sram_total_bytes,
        "sram": format_size(cfg.sram_total_bytes),
        "noc": f"{cfg.noc.topology} {cfg.noc_nodes} nodes",
        "memory": "none" if mem is None else f"{mem.devices} x {mem.standard}",
        "memory_bytes": 0 if mem is None else dram.capacity_bytes(mem),
        "peak_dram_gbps": 0.0 if mem is None else round(dram.peak_gbps(mem), 2),
    }


def run(args) -> int:
    from tilesim import config

    if args.schema:
        print("\n".join(config.schema_lines()))
        return 0
    paths = args.configs or [str(config.CONFIG_DIR / f"{n}.yaml") for n in config.preset_names()]
    ok, failed = [], 0
    for p in paths:
        try:
            ok.append(summary(config.load(p)))
        except TilesimError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    if args.json:
        print_json(ok)
    else:
        for s in ok:
            print(f"ok  {s['name']:<22} {s['cores']:>4} cores  {s['array']:<20} "
                  f"{s['peak_tflops']:>9.4g} TFLOP/s  SRAM {s['sram']:>9}  "
                  f"{s['memory']:<10} {s['peak_dram_gbps']:>8.1f} GB/s  ({s['config']})")
    return EXIT_USAGE if failed else 0
