"""`tilesim asm` and `tilesim disasm`: tile assembly text <-> program files (.npz)."""
from __future__ import annotations

import sys

from tilesim.cli import print_json, read_text
from tilesim.errors import InputError


def add_parser(sub) -> None:
    a = sub.add_parser("asm", help="assemble a .tasm program into .npz",
                       description="Assemble tile assembly text into a program file.")
    a.add_argument("file", metavar="FILE.tasm")
    a.add_argument("-o", "--output", metavar="FILE.npz", help="default: FILE.npz")
    a.add_argument("--config", metavar="CONFIG", help="also validate against this chip")
    a.add_argument("--json", action="store_true", help="print a JSON summary")
    a.set_defaults(func=run_asm)

    d = sub.add_parser("disasm", help="print a .npz program as assembly text",
                       description="Disassemble a program file into canonical assembly text.")
    d.add_argument("file", metavar="FILE.npz")
    d.add_argument("--json", action="store_true", help="wrap the text in JSON")
    d.set_defaults(func=run_disasm)


def run_asm(args) -> int:
    from tilesim import config
    from tilesim.isa import assemble, validate

    prog = assemble(read_text(args.file), args.file)
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
        print_json(summary)
    else:
        print(f"{args.file}: {summary['instructions']} instructions on {prog.n_cores} core(s) "
              f"-> {out}" + (f" (valid for {args.config})" if args.config else ""))
    return 0


def run_disasm(args) -> int:
    from tilesim.isa import disassemble
    from tilesim.isa.program import Program

    text = disassemble(Program.load(args.file))
    if args.json:
        print_json({"program": args.file, "text": text})
    else:
        sys.stdout.write(text)
    return 0
