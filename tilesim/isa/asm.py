"""Tile assembly (``.tasm``): the text form of a :class:`~tilesim.isa.program.Program`.

What the instructions do is defined in :mod:`tilesim.isa.opcodes`; this module defines only
how they are written. :func:`assemble` turns text into a Program, :func:`disassemble` turns a
Program into canonical text, and the two are exact inverses: every record field survives,
floats to the bit.

A small file::

    .program copy_tile cores=1 dma_engines=1
    .sem loaded
    .buffer X  space=dram addr=0x0 dtype=int8 shape=4,4
    .buffer x  space=sram core=0 addr=0x100 dtype=int8 shape=4,4

    .queue core=0 engine=dma0
        load src=X dst=x shape=4,4 src_stride=4,1 dst_stride=4,1 dtype=int8 signal=loaded
    .queue core=0 engine=vector
        exp wait=loaded>=1 src=x dst=x shape=4,4 src_stride=4,1 dst_stride=4,1 dtype=int8

Lines
-----
One statement per line. ``#`` starts a comment that runs to the end of the line; blank lines
are ignored; indentation means nothing. A statement is a word followed by ``key=value`` tokens
separated by spaces, with no spaces inside a value. Integers are decimal (``16``, ``-3``) or
hexadecimal (``0x40``, ``-0x10``); lists are comma-separated (``shape=16,4``).

Directives
----------
``.program NAME cores=N dma_engines=D``
    The first statement, exactly once. NAME is printable, without spaces, ``#`` or ``=``.
    N cores (1 to 4096); D DMA engines per core (0 to 16), so each core has the engines
    ``matrix``, ``vector``, ``dma0`` ... ``dma<D-1>``.
``.sem NAME [NAME ...]``
    Declares semaphores; each takes the next id, counting from 0.
``.buffer NAME space=dram|sram [core=C] addr=A dtype=T shape=D0,D1,...``
    Names an address range: DRAM, or core C's SRAM (``core`` is required for sram and not
    allowed for dram). A is the first byte (0 to 2**63 - 1), T a datatype, the shape lists
    elements per dimension, outermost first, each at least 1 (``shape=()`` is one element).
``.queue core=C engine=E``
    The instructions that follow go to engine E (matrix, vector, dma0, ...) of core C. A queue
    may be opened again later; its instructions keep the order they were written in.

Semaphore and buffer names start with a letter or ``_`` and go on with letters, digits, ``_``
and ``.``; ``none`` is reserved. Declare a name before using it. Semaphores and buffers have
separate namespaces.

Instructions
------------
``MNEMONIC key=value ...`` with keys in any order, each at most once (``wait`` and ``signal``
at most twice). The queue's engine decides which mnemonics are allowed::

    matrix   nop halt ldw mm
    vector   nop halt add sub mul max recip exp rsqrt silu gelu reduce_sum reduce_max rope
             convert copy
    dma<i>   nop halt load store copy

so ``copy`` is the DMA copy (SRAM to another core's SRAM) on a DMA queue and the vector copy on
the vector queue. Keys, the record fields they set, and the value an omitted key leaves:

    wait=S>=N          wait until semaphore S (a name or an id) has been signalled N times;
                       the first wait fills slot 0, the second slot 1; ``wait=none`` leaves a
                       slot empty                                                   [none]
    signal=S           signal S when done; slots as for wait                        [none]
    src= src2= dst=    src_addr, src2_addr, dst_addr in bytes: a number, ``BUF`` or
                       ``BUF+OFFSET``                                               [0]
    dst_core=C         the core a DMA copy writes to; for a load, the first core it
                       writes to instead of its own (a multicast)                   [-1]
    mc_count=N         a multicast load writes cores dst_core + j * mc_stride,
    mc_stride=S        j < max(1, N)                                                [0]
    m= k= n=           matrix tile sizes                                            [0]
    shape=a,b,c,d      elements per dimension, innermost last; a shorter list is padded on
                       the left with 1, so ``shape=16,4`` is 1,1,16,4               [0,0,0,0]
    src_stride=...     bytes between neighbours in each dimension, padded on the left
    dst_stride=...     with 0, so ``src_stride=16,1`` is 0,0,16,1 (row 16, element 1)
                                                                                    [0,0,0,0]
    src2_stride=R      bytes between rows of src2                                   [0]
    dtype= dtype2=     int4 int8 int32 fp8e4m3 fp8e5m2 bf16 fp16 fp32               [none]
    flags=F|F          accumulate transpose bcast_row bcast_col bcast_imm, or a number [0]
    imm=X              a float: decimal (0.5, 1e-05, -0.0, inf, nan) or hex (0x1.8p+3) [0.0]
    imm_bits=B         the same float given by its 64 IEEE-754 bits (NaN payloads)

Every key is accepted on every mnemonic, so any record can be written; whether a value makes
sense for the instruction (an ``m`` on a load, a flag on the wrong op, an address outside the
SRAM) is the business of :mod:`tilesim.isa.validate`, which reports it by line.

A symbolic address names a buffer the operand can actually reach: a load reads DRAM and writes
the SRAM of its own core (of ``dst_core`` for a multicast), a store the reverse, a DMA copy
reads its own core's SRAM and writes the SRAM of ``dst_core``, and ldw, mm and the vector ops
read and write their own core's SRAM.
Operands an instruction does not use (``src2`` of a load, any address of nop) take numbers only.

Canonical text
--------------
:func:`disassemble` writes a banner comment, ``.program``, one ``.sem`` per semaphore and one
``.buffer`` per buffer in declaration order, then every non-empty queue in core and engine
order, each instruction indented four spaces with its keys in the order of the table above.
It leaves out keys at their default, writes integers in decimal, addresses in hex (or as
``BUF+OFFSET`` with a decimal offset, choosing the containing buffer that starts last, the
earliest declared on a tie), lists without their padding but at least two long, and ``imm`` as
Python's shortest round-trip repr (``imm_bits`` only for NaNs that repr would lose).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import struct
from bisect import bisect_right

import numpy as np

from tilesim.config import CoresConfig, DmaConfig
from tilesim.dtypes import BY_CODE, DTYPES
from tilesim.errors import AsmError, ProgramError
from tilesim.isa.opcodes import (INSTR_DTYPE, MAX_SIGNALS, MAX_WAITS, NO_SEM, OPS_OF_ENGINE,
                                 Engine, Flag, Op, VecOp, blank, engine_kind, engine_name)
from tilesim.isa.program import SPACES, Buffer, Program

# --------------------------------------------------------------------------------------------
# Vocabulary shared by the assembler, the disassembler and the validator's messages
# --------------------------------------------------------------------------------------------

_OP_WORDS = {Op.NOP: "nop", Op.HALT: "halt", Op.LOAD: "load", Op.STORE: "store",
             Op.COPY: "copy", Op.LDW: "ldw", Op.MM: "mm"}


def mnemonic(op: int, vop: int = 0) -> str:
    """The assembly word for an (op, vop) pair, or 'opcode N' / 'vop N' when there is none."""
    if op == Op.VOP:
        return VecOp(vop).name.lower() if vop in _VOP_CODES else f"vop {vop}"
    return _OP_WORDS.get(op) or f"opcode {op}"


def _mnemonics_of(kind: Engine) -> dict[str, tuple[int, int]]:
    """Mnemonic -> (op, vop) for one engine kind, in opcode order."""
    table = {}
    for op in sorted(OPS_OF_ENGINE[kind]):
        if op == Op.VOP:
            table.update({v.name.lower(): (int(Op.VOP), int(v)) for v in VecOp})
        else:
            table[_OP_WORDS[op]] = (int(op), 0)
    return table


MNEMONICS = {kind: _mnemonics_of(kind) for kind in Engine}
"""Engine kind -> {mnemonic: (op, vop)}: what each queue accepts."""

_VOP_CODES = frozenset(int(v) for v in VecOp)
_FLAG_WORDS = {f.name.lower(): int(f) for f in Flag}
_DTYPE_WORDS = {d.name: d.code for d in DTYPES.values()}


def _config_max(cls, name: str) -> int:
    """The largest value a chip config allows for field ``name`` of ``cls``."""
    return next(f.metadata["max"] for f in dataclasses.fields(cls) if f.name == name)


MAX_CORES = _config_max(CoresConfig, "count")
MAX_DMA_ENGINES = _config_max(DmaConfig, "engines")

# Which operands hold addresses, the memory each one reaches ("sram" of the own core, "sram@dst"
# of dst_core, or "dram"), per opcode. Operands not listed are not used by that opcode.
OPERAND_SPACES: dict[int, dict[str, str]] = {
    Op.LOAD: {"src": "dram", "dst": "sram@load"},
    Op.STORE: {"src": "sram", "dst": "dram"},
    Op.COPY: {"src": "sram", "dst": "sram@dst"},
    Op.LDW: {"src": "sram"},
    Op.MM: {"src": "sram", "dst": "sram"},
    Op.VOP: {"src": "sram", "src2": "sram", "dst": "sram"},
}

_ADDR_FIELDS = {"src": "src_addr", "src2": "src2_addr", "dst": "dst_addr"}
_SCALAR_FIELDS = ("dst_core", "mc_count", "mc_stride", "m", "k", "n", "src2_stride")
_LIST_PAD = {"shape": 1, "src_stride": 0, "dst_stride": 0}
KEYS = ("wait", "src", "src2", "dst_core", "mc_count", "mc_stride", "dst", "m", "k", "n",
        "shape", "src_stride", "src2_stride", "dst_stride", "dtype", "dtype2", "flags", "imm",
        "imm_bits", "signal")
"""Instruction keys, in the order the disassembler writes them."""

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INT_RE = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)")
_FLOAT_RE = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)")
_HEXFLOAT_RE = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)"
                          r"(?:[pP][+-]?[0-9]+)?")
_MAX_DIGITS = 24        # longer integers are out of every field's range anyway
_RESERVED = "none"
_BANNER = "# tile assembly, written by tilesim.isa.asm.disassemble"


_FIELD_LIMITS = {name: (int(np.iinfo(INSTR_DTYPE[name].base).min),
                         int(np.iinfo(INSTR_DTYPE[name].base).max))
                  for name in INSTR_DTYPE.names if INSTR_DTYPE[name].base.kind in "iu"}
"""Integer record field -> (smallest, largest) value it holds."""


def _defaults() -> dict:
    """Field -> value of a blank record (opcodes.blank), with imm as its IEEE bits."""
    r = blank(1)
    d = {name: r[name][0].tolist() for name in INSTR_DTYPE.names}
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    d["imm"] = 0
    return d


_DEFAULTS = _defaults()


def is_name(text: str) -> bool:
    """Whether ``text`` can name a semaphore or buffer in assembly."""
    return bool(_NAME_RE.fullmatch(text)) and text != _RESERVED


def _is_program_name(text: str) -> bool:
    return (bool(text) and text.isprintable() and "#" not in text and "=" not in text
            and not any(ch.isspace() for ch in text))


def _float_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def _show(text: str) -> str:
    """A user's token, quoted, printable, and short enough for a one-line message."""
    s = text if text.isprintable() else repr(text)[1:-1]
    return "'" + (s if len(s) <= 40 else s[:37] + "...") + "'"


def _listing(names, limit: int = 8) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more or "none declared"


def _suggest(word: str, choices) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1) if len(word) <= 40 else []
    return f"; did you mean '{hint[0]}'?" if hint else ""


# --------------------------------------------------------------------------------------------
# Assembler
# --------------------------------------------------------------------------------------------


def assemble(text: str, source: str = "<string>") -> Program:
    """Assemble ``.tasm`` text into a Program whose ``lines`` map each instruction to its line.

    Raises AsmError, one line naming ``source`` and the line, for any text that is not valid
    assembly; never another exception.
    """
    asm = _Assembler(source)
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        asm.statement(number, line.split("#", 1)[0].split())
    return asm.finish(len(lines))


@dataclasses.dataclass
class _Header:
    name: str
    cores: int
    dma_engines: int


class _Assembler:
    """State while reading: the header, declarations, the open queue, the records so far."""

    def __init__(self, source: str):
        self.source = source
        self.line = 0
        self.header: _Header | None = None
        self.sems: dict[str, int] = {}
        self.buffers: dict[str, Buffer] = {}
        self.queue: tuple[int, int] | None = None
        self.records: list[dict] = []
        self.keys: list[tuple[int, int]] = []
        self.lines: list[int] = []

    def fail(self, what: str, allowed: str):
        raise AsmError(f"{self.source}: line {self.line}: {what} ({allowed})")

    # ---- statements ------------------------------------------------------------------------
    def statement(self, number: int, tokens: list[str]) -> None:
        if not tokens:
            return
        self.line = number
        word = tokens[0]
        if self.header is None and word != ".program":
            self.fail(f"{_show(word)} before .program",
                      "the first statement is .program NAME cores=N dma_engines=D")
        directive = _DIRECTIVES.get(word)
        if directive is not None:
            directive(self, tokens[1:])
        elif word.startswith("."):
            self.fail(f"unknown directive {_show(word)}",
                      "directives: " + ", ".join(_DIRECTIVES) + _suggest(word, _DIRECTIVES))
        else:
            self.instruction(word, tokens[1:])

    def program(self, args: list[str]) -> None:
        if self.header is not None:
            self.fail("a second .program", ".program is given once, first")
        if not args or "=" in args[0]:
            self.fail(".program needs a name", ".program NAME cores=N dma_engines=D")
        if not _is_program_name(args[0]):
            self.fail(f"program name {_show(args[0])} is not allowed",
                      "printable characters without spaces, '#' or '='")
        kv = self.pairs(args[1:], required=("cores", "dma_engines"), optional=())
        self.header = _Header(args[0], self.integer("cores", kv["cores"], 1, MAX_CORES),
                              self.integer("dma_engines", kv["dma_engines"], 0, MAX_DMA_ENGINES))

    def sem(self, args: list[str]) -> None:
        if not args:
            self.fail(".sem needs at least one name", ".sem NAME [NAME ...]")
        for name in args:
            self.check_name(name, "semaphore")
            if name in self.sems:
                self.fail(f"semaphore '{name}' is declared twice", "each name once")
            self.sems[name] = len(self.sems)

    def buffer(self, args: list[str]) -> None:
        if not args or "=" in args[0]:
            self.fail(".buffer needs a name first",
                      ".buffer NAME space=dram|sram [core=C] addr=A dtype=T shape=D0,D1,...")
        name = args[0]
        self.check_name(name, "buffer")
        if name in self.buffers:
            self.fail(f"buffer '{name}' is declared twice", "each name once")
        kv = self.pairs(args[1:], required=("space", "addr", "dtype", "shape"),
                        optional=("core",))
        space = kv["space"]
        if space not in SPACES:
            self.fail(f"space={_show(space)} is not a memory", "space=dram or space=sram")
        if space == "sram" and "core" not in kv:
            self.fail(f"sram buffer '{name}' needs core=C", "the core whose SRAM holds it")
        if space == "dram" and "core" in kv:
            self.fail(f"dram buffer '{name}' takes no core", "core= is for sram buffers")
        core = self.core_number("core", kv["core"]) if space == "sram" else -1
        addr = self.integer("addr", kv["addr"], 0, 2**63 - 1)
        dtype = self.dtype_name("dtype", kv["dtype"])
        shape = self.buffer_shape(kv["shape"])
        end = addr + (math.prod(shape) * DTYPES[dtype].bits + 7) // 8
        if end > 2**63 - 1:
            self.fail(f"buffer '{name}' ends at byte {end}", "buffers end below 2**63")
        self.buffers[name] = Buffer(name, space, core, addr, dtype, shape)

    def open_queue(self, args: list[str]) -> None:
        kv = self.pairs(args, required=("core", "engine"), optional=())
        core = self.core_number("core", kv["core"])
        names = [engine_name(e) for e in range(int(Engine.DMA) + self.header.dma_engines)]
        if kv["engine"] not in names:
            self.fail(f"engine={_show(kv['engine'])} is not an engine of this program",
                      "engine=" + " | ".join(names) + _suggest(kv["engine"], names))
        self.queue = (core, names.index(kv["engine"]))

    def instruction(self, word: str, args: list[str]) -> None:
        if self.queue is None:
            self.fail(f"instruction {_show(word)} outside a queue",
                      "open one first with .queue core=C engine=E")
        core, engine = self.queue
        kind, here = engine_kind(engine), engine_name(engine)
        allowed = MNEMONICS[kind]
        if word not in allowed:
            elsewhere = [k.name.lower() for k in Engine if word in MNEMONICS[k]]
            what = (f"'{word}' is a {elsewhere[0]} instruction, not one for {here}" if elsewhere
                    else f"unknown mnemonic {_show(word)}")
            self.fail(what, f"on {here}: " + ", ".join(allowed) + _suggest(word, allowed))
        rec = dict(_DEFAULTS)
        rec["op"], rec["vop"] = allowed[word]
        _InstructionReader(self, rec, core).read(args)
        self.records.append(rec)
        self.keys.append(self.queue)
        self.lines.append(self.line)

    # ---- values ----------------------------------------------------------------------------
    def pairs(self, tokens: list[str], required: tuple, optional: tuple) -> dict[str, str]:
        """``key=value`` tokens of a directive as a dict, every required key present."""
        allowed = required + optional
        out: dict[str, str] = {}
        for key, value in self.split_pairs(tokens):
            if key not in allowed:
                self.fail(f"unknown key {_show(key)}",
                          "keys here: " + ", ".join(allowed) + _suggest(key, allowed))
            if key in out:
                self.fail(f"key '{key}' given twice", "each key once")
            out[key] = value
        for key in required:
            if key not in out:
                self.fail(f"missing {key}=", "keys here: " + ", ".join(allowed))
        return out

    def split_pairs(self, tokens: list[str]) -> list[tuple[str, str]]:
        out = []
        for token in tokens:
            key, eq, value = token.partition("=")
            if not eq or not key:
                self.fail(f"{_show(token)} is not key=value",
                          "write key=value with no spaces around '='")
            out.append((key, value))
        return out

    def integer(self, key: str, text: str, lo: int, hi: int) -> int:
        """A decimal or hex integer within [lo, hi]."""
        if not _INT_RE.fullmatch(text):
            self.fail(f"{key}={_show(text)} is not an integer",
                      "decimal like 16 or -3, or hex like 0x40")
        value = _int_value(text)
        if not lo <= value <= hi:
            self.fail(f"{key}={_show(text)} is out of range", f"an integer from {lo} to {hi}")
        return value

    def core_number(self, key: str, text: str) -> int:
        return self.integer(key, text, 0, self.header.cores - 1)

    def dtype_name(self, key: str, text: str) -> str:
        if text not in DTYPES:
            self.fail(f"{key}={_show(text)} is not a datatype",
                      ", ".join(DTYPES) + _suggest(text, DTYPES))
        return text

    def buffer_shape(self, text: str) -> tuple[int, ...]:
        if text == "()":
            return ()
        return tuple(self.integer("shape", t, 1, 2**31 - 1) for t in text.split(","))

    def check_name(self, name: str, kind: str) -> None:
        if not is_name(name):
            self.fail(f"{kind} name {_show(name)} is not allowed",
                      "a letter or '_', then letters, digits, '_' or '.'; not 'none'")

    # ---- the Program -----------------------------------------------------------------------
    def finish(self, last_line: int) -> Program:
        if self.header is None:
            self.line = last_line
            self.fail("no .program statement", "the first statement is .program NAME cores=N "
                      "dma_engines=D")
        h = self.header
        n_engines = int(Engine.DMA) + h.dma_engines
        order = sorted(range(len(self.records)), key=self.keys.__getitem__)
        lengths = np.zeros((h.cores, n_engines), np.int64)
        for core, engine in self.keys:
            lengths[core, engine] += 1
        starts = (np.cumsum(lengths) - lengths.ravel()).reshape(lengths.shape)
        instrs = blank(len(order))
        if order:
            for name in INSTR_DTYPE.names:
                column = [self.records[i][name] for i in order]
                if name == "imm":
                    instrs[name] = np.array(column, np.uint64).view(np.float64)
                else:
                    instrs[name] = np.array(column, INSTR_DTYPE[name].base)
        return Program(h.cores, h.dma_engines, instrs, starts, lengths,
                       list(self.sems), list(self.buffers.values()),
                       np.array([self.lines[i] for i in order], np.int32), h.name, self.source)


def _int_value(text: str) -> int:
    """The value of text matching _INT_RE. Leading zeros are allowed ('007'); a number too
    long for any field comes back as +-2**128 rather than being converted digit by digit."""
    negative = text[0] == "-"
    digits = text[1:] if negative else text
    base = 16 if digits[1:2] in ("x", "X") else 10
    if base == 16:
        digits = digits[2:]
    if len(digits) > _MAX_DIGITS:
        digits = digits.lstrip("0") or "0"
    value = 2**128 if len(digits) > _MAX_DIGITS else int(digits, base)
    return -value if negative else value


_DIRECTIVES = {".program": _Assembler.program, ".sem": _Assembler.sem,
               ".buffer": _Assembler.buffer, ".queue": _Assembler.open_queue}


class _InstructionReader:
    """Reads the ``key=value`` tokens of one instruction into its record dict."""

    def __init__(self, asm: _Assembler, rec: dict, core: int):
        self.asm, self.rec, self.core = asm, rec, core
        self.symbols: dict[str, tuple[str, str, int]] = {}

    def read(self, tokens: list[str]) -> None:
        asm, rec = self.asm, self.rec
        waits, signals, seen = [], [], set()
        for key, value in asm.split_pairs(tokens):
            if key == "wait":
                waits.append(self.slot(key, value, waits, MAX_WAITS))
            elif key == "signal":
                signals.append(self.slot(key, value, signals, MAX_SIGNALS))
            elif key not in KEYS:
                asm.fail(f"unknown key {_show(key)}", "keys: " + ", ".join(KEYS)
                         + _suggest(key, KEYS))
            elif key in seen:
                asm.fail(f"key '{key}' given twice", "each key once; wait and signal up to twice")
            else:
                seen.add(key)
                self.field(key, value)
        if "imm" in seen and "imm_bits" in seen:
            asm.fail("both imm= and imm_bits=", "one of them")
        for i, w in enumerate(waits):
            rec["wait_sem"] = _put(rec["wait_sem"], i, NO_SEM if w is None else w[0])
            rec["wait_count"] = _put(rec["wait_count"], i, 0 if w is None else w[1])
        for i, s in enumerate(signals):
            rec["signal_sem"] = _put(rec["signal_sem"], i, NO_SEM if s is None else s)
        self.resolve_symbols()

    def slot(self, key: str, value: str, taken: list, limit: int):
        """One wait (sem, count) or signal sem; None for ``none``."""
        if len(taken) == limit:
            self.asm.fail(f"more than {limit} {key}= keys", f"at most {limit}")
        if value == _RESERVED:
            return None
        if key == "signal":
            return self.semaphore(value, "signal=S")
        sem, ge, count = value.partition(">=")
        if not ge:
            self.asm.fail(f"wait={_show(value)} has no '>='",
                          "wait=SEM>=COUNT, e.g. wait=full0>=2, or wait=none")
        lo, hi = _FIELD_LIMITS["wait_count"]
        return self.semaphore(sem, "wait=SEM>=COUNT"), self.asm.integer("wait count", count, lo,
                                                                         hi)

    def semaphore(self, text: str, form: str) -> int:
        if _INT_RE.fullmatch(text):
            return self.asm.integer("semaphore id", text, 0, _FIELD_LIMITS["signal_sem"][1])
        if text not in self.asm.sems:
            self.asm.fail(f"semaphore {_show(text)} is not declared",
                          f"{form} with a name declared by .sem, or an id; declared: "
                          + _listing(self.asm.sems) + _suggest(text, self.asm.sems))
        return self.asm.sems[text]

    def field(self, key: str, value: str) -> None:
        asm, rec = self.asm, self.rec
        if key in _ADDR_FIELDS:
            rec[_ADDR_FIELDS[key]] = self.address(key, value)
        elif key in _SCALAR_FIELDS:
            rec[key] = asm.integer(key, value, *_FIELD_LIMITS[key])
        elif key in _LIST_PAD:
            rec[key] = self.int_list(key, value)
        elif key in ("dtype", "dtype2"):
            rec[key] = _DTYPE_WORDS[asm.dtype_name(key, value)]
        elif key == "flags":
            rec[key] = self.flags(value)
        elif key == "imm":
            rec["imm"] = _float_bits(self.float_value(value))
        else:   # imm_bits
            rec["imm"] = asm.integer(key, value, 0, 2**64 - 1)

    def int_list(self, key: str, value: str) -> tuple[int, ...]:
        items = value.split(",")
        if len(items) > 4:
            self.asm.fail(f"{key}= has {len(items)} values", "1 to 4, innermost last")
        lo, hi = _FIELD_LIMITS[key]
        numbers = [self.asm.integer(key, t, lo, hi) for t in items]
        return tuple([_LIST_PAD[key]] * (4 - len(numbers)) + numbers)

    def flags(self, value: str) -> int:
        bits = 0
        for item in value.split("|"):
            if item in _FLAG_WORDS:
                bits |= _FLAG_WORDS[item]
            elif _INT_RE.fullmatch(item):
                bits |= self.asm.integer("flags", item, 0, _FIELD_LIMITS["flags"][1])
            else:
                self.asm.fail(f"flags={_show(value)}: {_show(item)} is not a flag",
                              " | ".join(_FLAG_WORDS) + ", or a number"
                              + _suggest(item, _FLAG_WORDS))
        return bits

    def float_value(self, text: str) -> float:
        try:
            if _FLOAT_RE.fullmatch(text):
                x = float(text)
            elif _HEXFLOAT_RE.fullmatch(text):
                x = float.fromhex(text)
            else:
                x = None
        except OverflowError:
            x = math.inf
        if x is None:
            self.asm.fail(f"imm={_show(text)} is not a number",
                          "decimal like 0.5, 1e-05, -0.0, inf, nan, or hex like 0x1.8p+3")
        if math.isinf(x) and "inf" not in text:
            self.asm.fail(f"imm={_show(text)} is out of range",
                          "a float64 magnitude below 1.8e308, or inf")
        return x

    def address(self, key: str, text: str) -> int:
        """A numeric address now; a symbolic one is remembered and resolved at the end."""
        name, plus, offset = text.partition("+")
        if _INT_RE.fullmatch(text):
            return self.asm.integer(key, text, *_FIELD_LIMITS[_ADDR_FIELDS[key]])
        if not _NAME_RE.fullmatch(name):
            self.asm.fail(f"{key}={_show(text)} is not an address",
                          "a number like 0x100, BUF or BUF+OFFSET")
        if name not in self.asm.buffers:
            self.asm.fail(f"{key}={_show(text)}: buffer {_show(name)} is not declared",
                          "a number, BUF or BUF+OFFSET with BUF declared by .buffer; declared: "
                          + _listing(self.asm.buffers) + _suggest(name, self.asm.buffers))
        off = self.asm.integer(f"{key} offset", offset, 0, 2**63 - 1) if plus else 0
        value = self.asm.buffers[name].addr + off
        if value > _FIELD_LIMITS[_ADDR_FIELDS[key]][1]:
            self.asm.fail(f"{key}={_show(text)} is out of range", "an address below 2**63")
        self.symbols[key] = (name, text, value)
        return value

    def resolve_symbols(self) -> None:
        """Check each symbolic address names a buffer its operand can reach."""
        op, rec = self.rec["op"], self.rec
        spaces = OPERAND_SPACES.get(op, {})
        for key, (name, text, _) in self.symbols.items():
            word = mnemonic(op, rec["vop"])
            if key not in spaces:
                self.asm.fail(f"{key}={_show(text)}: {word} does not use {key}",
                              "a plain number for an unused operand")
            space, core = _reach(spaces[key], self.core, rec["dst_core"])
            buf = self.asm.buffers[name]
            if buf.space != space or buf.core != core:
                where = "dram" if space == "dram" else f"the sram of core {core}"
                have = "dram" if buf.space == "dram" else f"the sram of core {buf.core}"
                self.asm.fail(f"{key}={_show(text)}: buffer '{name}' is in {have}",
                              f"{word} {key} is an address in {where}")


def _put(values: tuple, i: int, v: int) -> tuple:
    return values[:i] + (v,) + values[i + 1:]


def _reach(space: str, core: int, dst_core: int) -> tuple[str, int]:
    """(space, core) an operand addresses: own sram, dst_core's sram, or dram (core -1). A
    load writes its own core's sram, or with dst_core >= 0 (a multicast) that of dst_core."""
    if space == "dram":
        return "dram", -1
    if space == "sram@load":
        return "sram", dst_core if dst_core >= 0 else core
    return "sram", dst_core if space == "sram@dst" else core


# --------------------------------------------------------------------------------------------
# Disassembler
# --------------------------------------------------------------------------------------------


def disassemble(program: Program) -> str:
    """Canonical ``.tasm`` text for ``program``; ``assemble`` of it gives the program back.

    Raises ProgramError when something has no spelling in assembly: an opcode, vector op or
    datatype code that does not exist, an opcode on an engine that cannot run it, a name that
    is not a valid name, or a wait slot with a count but no semaphore.
    """
    p = program
    names = set()
    for kind, seq in (("semaphore", p.semaphores), ("buffer", [b.name for b in p.buffers])):
        for name in seq:
            if not is_name(name) or (kind, name) in names:
                raise ProgramError(f"{p.source or 'program'}: {kind} name {_show(name)} cannot be "
                                   "written in assembly (unique names of letters, digits, '_', "
                                   "'.'; not starting with a digit or '.'; not 'none')")
            names.add((kind, name))
    if not _is_program_name(p.name):
        raise ProgramError(f"{p.source or 'program'}: program name {_show(p.name)} cannot be "
                           "written in assembly (printable, without spaces, '#' or '=')")
    out = [_BANNER, f".program {p.name} cores={p.n_cores} dma_engines={p.dma_engines}"]
    out += [f".sem {s}" for s in p.semaphores]
    out += [_buffer_line(b) for b in p.buffers]
    writer = _RecordWriter(p)
    for core in range(p.n_cores):
        for engine in range(p.engines_per_core):
            start, length = int(p.queue_start[core, engine]), int(p.queue_len[core, engine])
            if length:
                out += ["", f".queue core={core} engine={engine_name(engine)}"]
                out += ["    " + writer.line(i, core, engine) for i in range(start, start + length)]
    return "\n".join(out) + "\n"


def _buffer_line(b: Buffer) -> str:
    core = f" core={b.core}" if b.space == "sram" else ""
    shape = ",".join(str(d) for d in b.shape) if b.shape else "()"
    return (f".buffer {b.name} space={b.space}{core} addr={_hex(b.addr)} dtype={b.dtype} "
            f"shape={shape}")


def _hex(value: int) -> str:
    return f"-0x{-value:x}" if value < 0 else f"0x{value:x}"


def _trim(values: list[int], pad: int) -> str:
    """A list without its left padding, at least two long."""
    i = 0
    while i < len(values) - 2 and values[i] == pad:
        i += 1
    return ",".join(str(v) for v in values[i:])


class _RecordWriter:
    """Formats one record as an instruction line."""

    def __init__(self, p: Program):
        self.p = p
        self.cols = {name: p.instrs[name].tolist() for name in INSTR_DTYPE.names}
        self.cols["imm"] = p.instrs["imm"].view(np.uint64).tolist()
        self.symbols = _Symbols(p.buffers)

    def fail(self, core: int, engine: int, i: int, what: str):
        pos = i - int(self.p.queue_start[core, engine])
        raise ProgramError(f"{self.p.source or 'program'}: core {core} engine "
                           f"{engine_name(engine)} instruction {pos}: {what}")

    def line(self, i: int, core: int, engine: int) -> str:
        c = {name: col[i] for name, col in self.cols.items()}
        word = self.word(c, core, engine, i)
        parts = [word]
        parts += self.slots("wait", c["wait_sem"], c["wait_count"], core, engine, i)
        spaces = OPERAND_SPACES.get(c["op"], {})
        for key in KEYS[1:-1]:
            text = self.value(key, c, spaces, core, engine, i)
            if text is not None:
                parts.append(f"{key}={text}")
        parts += self.slots("signal", c["signal_sem"], None, core, engine, i)
        return " ".join(parts)

    def word(self, c: dict, core: int, engine: int, i: int) -> str:
        op, vop, kind = c["op"], c["vop"], engine_kind(engine)
        table = MNEMONICS[kind]
        word = mnemonic(op, vop)
        if table.get(word) != (op, vop):
            self.fail(core, engine, i, f"{word} (op {op}, vop {vop}) has no mnemonic on "
                      f"{engine_name(engine)} (allowed there: {', '.join(table)})")
        return word

    def slots(self, key: str, sems: list, counts: list | None, core, engine, i) -> list[str]:
        used = [j for j, s in enumerate(sems) if s != NO_SEM or (counts and counts[j])]
        out = []
        for j in range(used[-1] + 1 if used else 0):
            s, n = sems[j], counts[j] if counts else 0
            if s == NO_SEM and n == 0:
                out.append(f"{key}=none")
            elif s < 0:
                self.fail(core, engine, i, f"{key} slot {j} holds semaphore {s} (count {n}), "
                          "which has no spelling (a semaphore id >= 0, or -1 with count 0)")
            else:
                name = self.p.semaphores[s] if s < len(self.p.semaphores) else str(s)
                out.append(f"{key}={name}>={n}" if counts else f"{key}={name}")
        return out

    def value(self, key: str, c: dict, spaces: dict, core, engine, i) -> str | None:
        """The text of one key, or None when the field is at its default."""
        if key in _ADDR_FIELDS:
            v = c[_ADDR_FIELDS[key]]
            if key in spaces:
                space, owner = _reach(spaces[key], core, c["dst_core"])
                symbol = self.symbols.find(space, owner, v)
                if symbol is not None:
                    return symbol
            return None if v == 0 else _hex(v)
        if key in ("imm", "imm_bits"):
            return _imm_text(key, c["imm"])
        v = c[key]
        if (tuple(v) if isinstance(v, list) else v) == _DEFAULTS[key]:
            return None
        if key in _LIST_PAD:
            return _trim(v, _LIST_PAD[key])
        if key in ("dtype", "dtype2"):
            if v not in BY_CODE:
                self.fail(core, engine, i, f"{key} code {v} is not a datatype "
                          f"(codes: {', '.join(f'{d.code} {d.name}' for d in DTYPES.values())})")
            return BY_CODE[v].name
        if key == "flags":
            return flags_text(v)
        return str(v)


def _imm_text(key: str, bits: int) -> str | None:
    """imm as repr when that round-trips to the same bits, else imm_bits in hex."""
    if bits == 0:
        return None
    x = struct.unpack("<d", struct.pack("<Q", bits))[0]
    exact = _float_bits(float(repr(x))) == bits
    if key == "imm":
        return repr(x) if exact else None
    return None if exact else f"0x{bits:016x}"


def flags_text(bits: int) -> str:
    """Flag bits as assembly writes them: 'accumulate|transpose', unknown bits as hex."""
    names = [name for name, f in _FLAG_WORDS.items() if bits & f]
    rest = bits & ~sum(_FLAG_WORDS.values())
    return "|".join(names + ([_hex(rest)] if rest else []))


class _Symbols:
    """Finds the buffer containing an address, per (space, core): the one starting last,
    the earliest declared on a tie."""

    def __init__(self, buffers: list[Buffer]):
        groups: dict[tuple[str, int], list] = {}
        for idx, b in enumerate(buffers):
            size = (math.prod(b.shape) * DTYPES[b.dtype].bits + 7) // 8 if b.dtype in DTYPES \
                else 0
            groups.setdefault((b.space, b.core), []).append((b.addr, -idx, b.addr + size, b.name))
        self.groups = {}
        for key, items in groups.items():
            items.sort()
            reach, ends = 0, []
            for _, _, end, _ in items:
                reach = max(reach, end)
                ends.append(reach)
            self.groups[key] = ([it[0] for it in items], ends, items)

    def find(self, space: str, core: int, addr: int) -> str | None:
        """'NAME' or 'NAME+OFFSET' for an address, or None when no buffer holds it."""
        group = self.groups.get((space, core))
        if group is None:
            return None
        starts, reach, items = group
        j = bisect_right(starts, addr) - 1
        while j >= 0 and reach[j] > addr:
            start, _, end, name = items[j]
            if addr < end:
                return name if addr == start else f"{name}+{addr - start}"
            j -= 1
        return None
