"""`tilesim ...`: a thin shell over the Python API.

Every subcommand has --help, and --json for machines where it prints results. A user mistake
(bad config, bad assembly, bad argument) prints one line on stderr and exits with status 2;
nothing here prints a traceback for one.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from tilesim.errors import InputError, TilesimError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------


def _config_summary(cfg) -> dict:
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


def cmd_check(args) -> int:
    from tilesim import config

    if args.schema:
        print("\n".join(config.schema_lines()))
        return 0
    paths = args.configs or [str(config.CONFIG_DIR / f"{n}.yaml") for n in config.preset_names()]
    ok, failed = [], 0
    for p in paths:
        try:
            ok.append(_config_summary(config.load(p)))
        except TilesimError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    if args.json:
        _print_json(ok)
    else:
        for s in ok:
            print(f"ok  {s['name']:<22} {s['cores']:>4} cores  {s['array']:<20} "
                  f"{s['peak_tflops']:>9.4g} TFLOP/s  SRAM {s['sram']:>9}  "
                  f"{s['memory']:<10} {s['peak_dram_gbps']:>8.1f} GB/s  ({s['config']})")
    return EXIT_USAGE if failed else 0


# --------------------------------------------------------------------------------------------
# asm / disasm
# --------------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None


def cmd_asm(args) -> int:
    from tilesim import config
    from tilesim.isa import assemble, validate

    prog = assemble(_read_text(args.file), args.file)
    if args.config:
        validate(prog, config.load(args.config))
    out = args.output or (args.file.rsplit(".", 1)[0] + ".npz")
    try:
        prog.save(out)
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e})") from None
    summary = {"program": prog.name, "output": out, "instructions": int(len(prog.instrs)),
               "cores": prog.n_cores, "semaphores": len(prog.semaphores),
               "validated_against": args.config or None}
    if args.json:
        _print_json(summary)
    else:
        print(f"{args.file}: {summary['instructions']} instructions on {prog.n_cores} core(s) "
              f"-> {out}" + (f" (valid for {args.config})" if args.config else ""))
    return 0


def cmd_disasm(args) -> int:
    from tilesim.isa import disassemble
    from tilesim.isa.program import Program

    text = disassemble(Program.load(args.file))
    if args.json:
        _print_json({"program": args.file, "text": text})
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tilesim", description="Cycle-level simulator of AI inference accelerators.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("check", help="validate chip configs and summarise them",
                       description="Validate chip configs (all presets when none are named).")
    c.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML file or preset name")
    c.add_argument("--json", action="store_true", help="print the summaries as JSON")
    c.add_argument("--schema", action="store_true", help="print every config key with its "
                   "default and meaning")
    c.set_defaults(func=cmd_check)

    a = sub.add_parser("asm", help="assemble a .tasm program into .npz",
                       description="Assemble tile assembly text into a program file.")
    a.add_argument("file", metavar="FILE.tasm")
    a.add_argument("-o", "--output", metavar="FILE.npz", help="default: FILE.npz")
    a.add_argument("--config", metavar="CONFIG", help="also validate against this chip")
    a.add_argument("--json", action="store_true", help="print a JSON summary")
    a.set_defaults(func=cmd_asm)

    d = sub.add_parser("disasm", help="print a .npz program as assembly text",
                       description="Disassemble a program file into canonical assembly text.")
    d.add_argument("file", metavar="FILE.npz")
    d.add_argument("--json", action="store_true", help="wrap the text in JSON")
    d.set_defaults(func=cmd_disasm)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TilesimError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
