"""The tile assembler: exact round trips, the documented syntax, and one-line errors only."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tilesim.dtypes import DTYPES
from tilesim.errors import AsmError, ProgramError
from tilesim.isa import Engine, Flag, Op, ProgramBuilder, VecOp, assemble, disassemble
from tilesim.isa.asm import KEYS, MNEMONICS, is_name
from tilesim.isa.opcodes import INSTR_DTYPE, MAX_SIGNALS, MAX_WAITS, NO_SEM

EXAMPLE = (Path(__file__).resolve().parents[2]
           / "tilesim/programs/examples/gemm_double_buffered.tasm")
HEADER = ".program t cores=2 dma_engines=2\n"


def bits_of(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def float_of(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


# --------------------------------------------------------------------------------------------
# Random valid programs
# --------------------------------------------------------------------------------------------


def limits(field: str) -> tuple[int, int]:
    info = np.iinfo(INSTR_DTYPE[field].base)
    return int(info.min), int(info.max)


def ints(field: str):
    """Integers of a record field, with its extremes and small values made likely."""
    lo, hi = limits(field)
    return st.one_of(st.sampled_from([lo, hi, 0, 1, -1]), st.integers(-64, 64),
                     st.integers(lo, hi))


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,5}", fullmatch=True).filter(is_name)
program_names = st.text(st.characters(whitelist_categories=("L", "N", "P", "S"),
                                      blacklist_characters="#="), min_size=1, max_size=8)
imms = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -1.7976931348623157e308, 0.1, 1e-05]),
    st.integers(0, 2**64 - 1).map(float_of),                        # any bits, NaN payloads too
    st.integers(0, 2**52 - 1).map(lambda m: float_of(0xFFF0000000000001 | m)))  # negative NaNs


@st.composite
def buffers(draw, n_cores: int):
    space = draw(st.sampled_from(["dram", "sram"]))
    shape = tuple(draw(st.lists(st.integers(1, 64), max_size=3)))
    return dict(space=space, core=draw(st.integers(0, n_cores - 1)) if space == "sram" else -1,
                addr=draw(st.integers(0, 2**40)), dtype=draw(st.sampled_from(list(DTYPES))),
                shape=shape)


@st.composite
def slots(draw, n_sem: int, with_count: bool, limit: int):
    """Semaphore slots: empty, or an id (declared or not), keeping holes in place."""
    sems, counts = [], []
    for _ in range(limit):
        if draw(st.booleans()):
            sems.append(NO_SEM)
            counts.append(0)
        else:
            sems.append(draw(st.integers(0, n_sem + 2)))
            counts.append(draw(ints("wait_count")) if with_count else 0)
    return sems, counts


@st.composite
def records(draw, kind: Engine, n_sem: int, buffer_addrs: list[int]):
    op, vop = draw(st.sampled_from(sorted(MNEMONICS[kind].values())))
    addr = st.one_of(ints("src_addr"), st.sampled_from(buffer_addrs or [0]),
                     st.sampled_from(buffer_addrs or [0]).map(lambda a: a + 3))
    wait_sem, wait_count = draw(slots(n_sem, True, MAX_WAITS))
    signal_sem, _ = draw(slots(n_sem, False, MAX_SIGNALS))
    dtype_codes = st.sampled_from([0] + [d.code for d in DTYPES.values()])
    fields = dict(op=op, vop=vop, flags=draw(st.integers(0, 255)), dtype=draw(dtype_codes),
                  dtype2=draw(dtype_codes), dst_core=draw(ints("dst_core")),
                  wait_sem=wait_sem, wait_count=wait_count, signal_sem=signal_sem,
                  src_addr=draw(addr), src2_addr=draw(addr), dst_addr=draw(addr),
                  src2_stride=draw(ints("src2_stride")), imm=draw(imms))
    for f in ("m", "k", "n"):
        fields[f] = draw(ints(f))
    for f in ("shape", "src_stride", "dst_stride"):
        fields[f] = draw(st.lists(ints(f), min_size=4, max_size=4))
    return fields


@st.composite
def programs(draw):
    n_cores, dma = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    b = ProgramBuilder(n_cores, dma, name=draw(program_names))
    for name in draw(st.lists(names, max_size=4, unique=True)):
        b.sem(name)
    for name in draw(st.lists(names, max_size=4, unique=True)):
        b.buffer(name, **draw(buffers(n_cores)))
    addrs = [buf.addr for buf in b.buffers]
    queues = [(c, e) for c in range(n_cores) for e in range(b.engines_per_core)]
    for core, engine in draw(st.lists(st.sampled_from(queues), max_size=4)):
        kind = Engine(min(engine, int(Engine.DMA)))
        for _ in range(draw(st.integers(1, 3))):
            b.emit(core, engine, **draw(records(kind, len(b.semaphores), addrs)))
    return b.build()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_disassemble_then_assemble_gives_back_every_field_to_the_bit(program):
    text = disassemble(program)
    again = assemble(text, "roundtrip.tasm")
    assert again == program
    assert disassemble(again) == text, "canonical text is a fixed point"


# --------------------------------------------------------------------------------------------
# Garbage in: a Program or one AsmError line, nothing else
# --------------------------------------------------------------------------------------------


def assemble_or_error(text: str):
    """Assemble; on success the program must round-trip, on failure the error is one line."""
    try:
        program = assemble(text, "fuzz.tasm")
    except AsmError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and "\n" not in msg
        assert msg.startswith("fuzz.tasm: line ")
        line = int(msg.split(":")[1].split()[1])
        assert 1 <= line <= text.count("\n") + 1
        return None
    assert assemble(disassemble(program)) == program
    return program


VOCAB = (["\n", " ", "=", ",", "|", ">=", "+", "#", "-", "0x", "()", ".sem", ".buffer", ".queue",
          ".program", "cores=", "engine=dma0", "engine=vector", "core=0", "space=sram",
          "space=dram", "addr=0x10", "dtype=int4", "shape=3,5", "none", "nan", "-0.0", "1e999",
          "0x1p99999", "9" * 30, "-0x8000000000000000", "\r", "\x0b", "\u2028", "\x00", "é"]
         + list(KEYS) + [k + "=" for k in KEYS]
         + [w for table in MNEMONICS.values() for w in table])


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_a_program_or_one_line_asm_error(text):
    assemble_or_error(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(VOCAB) | st.text(max_size=4), max_size=60))
def test_random_tokens_give_a_program_or_one_line_asm_error(tokens):
    assemble_or_error(HEADER + " ".join(tokens))
    assemble_or_error("".join(tokens))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_mutated_assembly_gives_a_program_or_one_line_asm_error(program, data):
    text = disassemble(program)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(st.sampled_from(VOCAB) | st.text(max_size=6))
        text = text[:at] + insert + text[at + cut:]
    assemble_or_error(text)


# --------------------------------------------------------------------------------------------
# The documented syntax
# --------------------------------------------------------------------------------------------


def one(text: str, core: int = 0, engine: int = Engine.DMA):
    """Assemble a single-instruction program body; return that record."""
    program = assemble(HEADER + text)
    return program.queue(core, engine)[0]


def test_example_gemm_assembles_with_line_numbers_and_canonical_text_is_a_fixed_point():
    text = EXAMPLE.read_text()
    program = assemble(text, str(EXAMPLE))
    assert program.name == "gemm_double_buffered" and program.n_cores == 1
    assert program.semaphores == ["full0", "full1", "empty0", "empty1", "done"]
    assert [len(program.queue(0, e)) for e in range(4)] == [8, 0, 8, 1]
    lines = text.split("\n")
    for record_line in program.lines:
        assert lines[record_line - 1].split()[0] in ("load", "ldw", "mm", "store")
    canonical = disassemble(program)
    assert disassemble(assemble(canonical)) == canonical
    assert "src=A+12" in canonical and "dst=a1" in canonical


def test_copy_is_the_dma_copy_on_a_dma_queue_and_the_vector_copy_on_the_vector_queue():
    program = assemble(HEADER + ".queue core=0 engine=dma1\n copy dst_core=1\n"
                       ".queue core=0 engine=vector\n copy dtype=fp16\n")
    assert program.queue(0, Engine.DMA + 1)[0]["op"] == Op.COPY
    vector = program.queue(0, Engine.VECTOR)[0]
    assert (vector["op"], vector["vop"]) == (Op.VOP, VecOp.COPY)


def test_short_lists_are_padded_on_the_left_with_1_for_shape_and_0_for_strides():
    r = one(".queue core=0 engine=dma0\n load shape=16,4 src_stride=16,1 dst_stride=1")
    assert list(r["shape"]) == [1, 1, 16, 4]
    assert list(r["src_stride"]) == [0, 0, 16, 1] and list(r["dst_stride"]) == [0, 0, 0, 1]


def test_waits_and_signals_fill_slots_in_order_and_none_keeps_a_hole():
    r = one(".sem a b\n.queue core=0 engine=dma0\n nop wait=none wait=b>=3 signal=7 signal=a")
    assert list(r["wait_sem"]) == [NO_SEM, 1] and list(r["wait_count"]) == [0, 3]
    assert list(r["signal_sem"]) == [7, 0]
    program = assemble(HEADER + ".sem a b\n.queue core=0 engine=dma0\n nop wait=none wait=b>=3")
    assert "nop wait=none wait=b>=3" in disassemble(program)


def test_symbolic_addresses_resolve_and_the_disassembler_picks_the_buffer_starting_last():
    text = HEADER + (".buffer big space=sram core=0 addr=0x100 dtype=int8 shape=256\n"
                     ".buffer tile space=sram core=0 addr=0x140 dtype=int8 shape=16\n"
                     ".buffer twin space=sram core=0 addr=0x140 dtype=int8 shape=16\n"
                     ".buffer D space=dram addr=0x1000 dtype=int8 shape=64\n"
                     ".queue core=0 engine=dma0\n load src=D+0x10 dst=big+0x48\n")
    r = assemble(text).queue(0, Engine.DMA)[0]
    assert (r["src_addr"], r["dst_addr"]) == (0x1010, 0x148)
    assert "load src=D+16 dst=tile+8" in disassemble(assemble(text))


def test_copy_dst_names_a_buffer_in_the_destination_cores_sram():
    text = HEADER + (".buffer x space=sram core=0 addr=0 dtype=int8 shape=8\n"
                     ".buffer y space=sram core=1 addr=0 dtype=int8 shape=8\n"
                     ".queue core=0 engine=dma0\n copy src=x dst_core=1 dst=y+4\n")
    assert "copy src=x dst_core=1 dst=y+4" in disassemble(assemble(text))
    with pytest.raises(AsmError, match=r"line 5: dst='x': buffer 'x' is in the sram of core 0"):
        assemble(text.replace("dst=y+4", "dst=x"))


@pytest.mark.parametrize("written, value", [
    ("imm=-0.0", -0.0), ("imm=1e-05", 1e-05), ("imm=0x1.8p+3", 12.0), ("imm=-inf", -math.inf),
    ("imm=3", 3.0), ("imm_bits=0x3ff0000000000000", 1.0)])
def test_imm_forms(written, value):
    r = one(f".queue core=0 engine=vector\n add {written}", engine=Engine.VECTOR)
    assert bits_of(float(r["imm"])) == bits_of(value)


def test_nan_payloads_survive_as_imm_bits():
    text = HEADER + ".queue core=0 engine=vector\n    add imm_bits=0xfff8000000000123\n"
    r = assemble(text).queue(0, Engine.VECTOR)[0]
    assert int(r["imm"].view(np.uint64)) == 0xFFF8000000000123
    assert "imm_bits=0xfff8000000000123" in disassemble(assemble(text))


def test_flags_by_name_or_number():
    r = one(".queue core=0 engine=matrix\n mm flags=accumulate|transpose|0x80", engine=0)
    assert r["flags"] == Flag.ACCUMULATE | Flag.TRANSPOSE | 0x80
    assert "flags=accumulate|transpose|0x80" in disassemble(
        assemble(HEADER + ".queue core=0 engine=matrix\n mm flags=0x83"))


def test_a_reopened_queue_keeps_program_order_and_lines():
    text = HEADER + (".queue core=1 engine=matrix\n ldw k=1\n.queue core=0 engine=vector\n exp\n"
                     ".queue core=1 engine=matrix\n mm m=2\n")
    program = assemble(text)
    q = program.queue(1, Engine.MATRIX)
    assert list(q["op"]) == [Op.LDW, Op.MM]
    assert list(program.lines) == [5, 3, 7]        # record order: core 0 first, then core 1


@pytest.mark.parametrize("body, line, fragment", [
    ("", 1, "no .program statement"),
    ("# only a comment\n.sem a\n", 2, "'.sem' before .program"),
    (HEADER + HEADER, 2, "a second .program"),
    (".program x cores=0 dma_engines=1\n", 1, "cores='0' is out of range (an integer from 1 to"),
    (HEADER + ".semaphore a\n", 2, "unknown directive '.semaphore' (directives: .program, .sem, "
     ".buffer, .queue)"),
    (HEADER + ".sem a a\n", 2, "semaphore 'a' is declared twice"),
    (HEADER + ".sem none\n", 2, "semaphore name 'none' is not allowed"),
    (HEADER + "load\n", 2, "instruction 'load' outside a queue"),
    (HEADER + ".queue core=2 engine=dma0\n", 2,
     "core='2' is out of range (an integer from 0 to 1)"),
    (HEADER + ".queue core=0 engine=dma2\n", 2, "engine='dma2' is not an engine of this program"),
    (HEADER + ".queue core=0 engine=dma0\n  mm\n", 3,
     "'mm' is a matrix instruction, not one for dma0"),
    (HEADER + ".queue core=0 engine=dma0\n  load m=4 m=5\n", 3, "key 'm' given twice"),
    (HEADER + ".queue core=0 engine=dma0\n  load m = 4\n", 3, "'m' is not key=value"),
    (HEADER + ".queue core=0 engine=dma0\n  load x=1\n", 3, "unknown key 'x'"),
    (HEADER + ".queue core=0 engine=dma0\n  load m=2147483648\n", 3,
     "m='2147483648' is out of range (an integer from -2147483648 to 2147483647)"),
    (HEADER + ".queue core=0 engine=dma0\n  load shape=1,2,3,4,5\n", 3, "shape= has 5 values"),
    (HEADER + ".queue core=0 engine=dma0\n  load wait=s>=1\n", 3, "semaphore 's' is not declared"),
    (HEADER + ".queue core=0 engine=dma0\n  load wait=1\n", 3, "wait='1' has no '>='"),
    (HEADER + ".queue core=0 engine=dma0\n  load signal=1 signal=2 signal=3\n", 3,
     "more than 2 signal= keys"),
    (HEADER + ".queue core=0 engine=dma0\n  load src=q\n", 3, "buffer 'q' is not declared"),
    (HEADER + ".queue core=0 engine=dma0\n  load dtype=int9\n", 3,
     "dtype='int9' is not a datatype"),
    (HEADER + ".queue core=0 engine=dma0\n  load flags=acc\n", 3, "'acc' is not a flag"),
    (HEADER + ".queue core=0 engine=dma0\n  load imm=1e999\n", 3, "imm='1e999' is out of range"),
    (HEADER + ".queue core=0 engine=dma0\n  load imm=1 imm_bits=0\n", 3, "both imm= and imm_bits="),
    (HEADER + ".buffer b space=sram addr=0 dtype=int8 shape=4\n", 2, "needs core=C"),
    (HEADER + ".buffer b space=dram core=0 addr=0 dtype=int8 shape=4\n", 2, "takes no core"),
    (HEADER + ".buffer b space=dram addr=0 dtype=int8 shape=0\n", 2, "shape='0' is out of range"),
    (HEADER + ".buffer b space=dram addr=0x7fffffffffffffff dtype=int8 shape=2\n", 2,
     "buffers end below 2**63"),
    (HEADER + ".buffer D space=dram addr=0 dtype=int8 shape=4\n.queue core=0 engine=dma0\n"
     "  nop src=D\n", 4, "nop does not use src"),
])
def test_errors_name_the_line_what_is_wrong_and_what_is_allowed(body, line, fragment):
    with pytest.raises(AsmError) as e:
        assemble(body, "bad.tasm")
    assert str(e.value).startswith(f"bad.tasm: line {line}: ")
    assert fragment in str(e.value)
    assert str(e.value).endswith(")")


def test_disassemble_refuses_what_has_no_spelling():
    b = ProgramBuilder(1, 1, name="x")
    b.emit(0, Engine.DMA, op=Op.LDW)
    with pytest.raises(ProgramError, match="core 0 engine dma0 instruction 0: ldw .* no mnemonic"):
        disassemble(b.build())
    b = ProgramBuilder(1, 1, name="has space")
    with pytest.raises(ProgramError, match="program name 'has space' cannot be written"):
        disassemble(b.build())
    b = ProgramBuilder(1, 1)
    b.sem("9lives")
    with pytest.raises(ProgramError, match="semaphore name '9lives'"):
        disassemble(b.build())


def test_an_empty_program_round_trips():
    program = ProgramBuilder(2, 0, name="empty").build()
    assert disassemble(program).endswith(".program empty cores=2 dma_engines=0\n")
    assert assemble(disassemble(program)) == program
