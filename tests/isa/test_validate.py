"""The program validator: each rule rejects its planted fault at the right line, and a correct
double-buffered GEMM passes."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesim import config
from tilesim.errors import ProgramError
from tilesim.isa import Engine, Flag, Op, ProgramBuilder, VecOp, assemble, problems, validate
from tilesim.isa.validate import _extent, _extent_exact, _Operand

EXAMPLE = (Path(__file__).resolve().parents[2]
           / "tilesim/programs/examples/gemm_double_buffered.tasm")
GEMM = EXAMPLE.read_text()


@pytest.fixture(scope="module")
def teach():
    return config.load("teach-4x4")


def planted(old: str, new: str) -> tuple[str, int]:
    """The GEMM example with its first ``old`` replaced by ``new``, and the line changed."""
    assert old in GEMM
    text = GEMM.replace(old, new, 1)
    return text, text[:text.index(new)].count("\n") + 1


def test_the_double_buffered_gemm_example_is_valid_on_teach_4x4(teach):
    program = assemble(GEMM, "gemm.tasm")
    assert problems(program, teach) == []
    validate(program, teach)


FAULTS = [
    pytest.param("dst=a1 shape=16,4", "dst=a1+0xffc0 shape=16,4",
                 "load dst touches sram bytes 0x10000 to 0x1003f (core 0's sram is 0x0 to 0xffff",
                 id="sram-out-of-range"),
    pytest.param("src=A+12", "src=0x3fffffc0",
                 "load src touches dram bytes 0x3fffffc0 to 0x400000b3 (dram is 0x0 to 0x3fffffff",
                 id="dram-out-of-range"),
    pytest.param("signal=done", "signal=7",
                 "mm signals semaphore 7, which is not declared (5 declared: ids 0 to 4)",
                 id="undeclared-semaphore"),
    pytest.param("ldw wait=full1>=2 src=b1 k=4", "ldw wait=full1>=2 src=b1 k=5",
                 "ldw k=5 does not fit the array (1 <= k <= 4: cores.systolic.rows of teach-4x4)",
                 id="ldw-larger-than-array"),
    pytest.param("mm src=a1 dst=c m=16 k=4", "mm src=a1 dst=c m=16 k=2",
                 "mm k=2 n=4 does not match the weights of the ldw at line 52 (k=4 n=4)",
                 id="mm-k-mismatch"),
    pytest.param("dtype=int8 dtype2=int32 signal=empty0", "dtype=int8 dtype2=fp32 signal=empty0",
                 "mm dtype2=fp32 does not match the array (dtype2=int32: cores.systolic.acc_dtype",
                 id="wrong-accumulator-dtype"),
    pytest.param("ldw wait=full0>=2 src=b0 k=4 n=4 src_stride=4,0 dtype=int8",
                 "ldw wait=full0>=2 src=b0 k=4 n=4 src_stride=4,0 dtype=fp16",
                 "ldw dtype=fp16 does not match the array (dtype=int8: cores.systolic.weight_dtype",
                 id="wrong-weight-dtype"),
    pytest.param("wait=full1>=4", "wait=full1>=5",
                 "ldw waits forever for full1>=5: it only reaches 4 (the whole program signals "
                 "it 4 times; 1 later instruction of this queue never runs)", id="deadlock"),
    pytest.param("flags=accumulate signal=empty1", "flags=transpose signal=empty1",
                 "mm flags=transpose not allowed (flags for mm: accumulate)", id="flag-for-op"),
    pytest.param("wait=empty0>=1", "wait=empty0>=0",
                 "load waits for empty0>=0, which always holds (wait counts >= 1)",
                 id="wait-count-zero"),
]


@pytest.mark.parametrize("old, new, message", FAULTS)
def test_each_planted_fault_is_reported_at_its_line(teach, old, new, message):
    text, line = planted(old, new)
    program = assemble(text, "gemm.tasm")
    found = problems(program, teach)
    assert any(p.startswith(f"gemm.tasm: line {line}: ") and message in p for p in found), found
    with pytest.raises(ProgramError) as e:
        validate(program, teach)
    assert len(str(e.value).splitlines()) == 1 and str(e.value) in {
        p + tail for p in found for tail in ("", " (and 1 more problem)",
                                             f" (and {len(found) - 1} more problems)")}


def test_a_wait_cycle_reports_every_stuck_queue_with_counts(teach):
    text = (".program cycle cores=1 dma_engines=1\n.sem a b\n"
            ".queue core=0 engine=dma0\n    nop wait=a>=1 signal=b\n"
            ".queue core=0 engine=matrix\n    nop wait=b>=1 signal=a\n    halt\n")
    found = problems(assemble(text, "c.tasm"), teach)
    assert found == [
        "c.tasm: line 6: nop waits forever for b>=1: it only reaches 0 (1 of its 1 signals come "
        "from instructions that are stuck themselves; 1 later instruction of this queue never "
        "runs)",
        "c.tasm: line 4: nop waits forever for a>=1: it only reaches 0 (1 of its 1 signals come "
        "from instructions that are stuck themselves)"]


def test_halt_ends_its_queue_so_signals_after_it_never_come(teach):
    text = (".program h cores=1 dma_engines=1\n.sem s\n"
            ".queue core=0 engine=dma0\n    halt\n    nop signal=s\n"
            ".queue core=0 engine=vector\n    nop wait=s>=1\n")
    assert problems(assemble(text, "h.tasm"), teach) == [
        "h.tasm: line 7: nop waits forever for s>=1: it only reaches 0 (1 of its 1 signals come "
        "from instructions that are stuck themselves)"]


def test_queues_resume_only_when_their_count_is_reached_in_any_order(teach):
    """A chain that zig-zags between two queues drains; one missing signal blocks exactly one."""
    b = ProgramBuilder(1, 1)
    s = b.sem("s")
    for i in range(200):
        b.emit(0, Engine.DMA if i % 2 else Engine.VECTOR, op=Op.NOP, wait=[(s, i)], signal=[s])
    assert problems(b.build(), teach) == problems(b.build(), teach) == [
        "core 0 engine vector instruction 0: nop waits for s>=0, which always holds "
        "(wait counts >= 1)"]
    b.emit(0, Engine.MATRIX, op=Op.NOP, wait=[(s, 201)])
    found = problems(b.build(), teach)
    assert found[-1] == ("core 0 engine matrix instruction 0: nop waits forever for s>=201: it "
                         "only reaches 200 (the whole program signals it 200 times)")


def test_messages_without_source_lines_name_core_engine_and_position(teach):
    b = ProgramBuilder(1, 2)
    b.emit(0, Engine.DMA + 1, op=Op.NOP)
    b.emit(0, Engine.DMA + 1, op=Op.LDW, k=4, n=4)
    assert problems(b.build(), teach) == [
        "core 0 engine dma1 instruction 1: ldw cannot run on dma1 (on dma1: nop, halt, load, "
        "store, copy)"]


def test_program_must_fit_the_chip(teach):
    b = ProgramBuilder(2, 3)
    assert problems(b.build(), teach) == [
        "program: the program uses 2 cores (teach-4x4 has cores.count = 1)",
        "program: the program uses 3 DMA engines per core (teach-4x4 has cores.dma.engines = 2)"]


def test_an_mm_needs_a_prior_ldw_in_its_own_queue(teach):
    text = (".program p cores=1 dma_engines=1\n.queue core=0 engine=matrix\n"
            "    mm m=1 k=4 n=4 dtype=int8 dtype2=int32\n")
    [msg] = problems(assemble(text, "p.tasm"), teach)
    assert msg.startswith("p.tasm: line 3: mm has no weights: no ldw before it in its queue")


def test_a_chip_without_memory_has_no_load_or_store():
    cfg = config.load("groq-like-sram")
    b = ProgramBuilder(1, 1)
    b.emit(0, Engine.DMA, op=Op.LOAD, dtype=2, shape=[1, 1, 1, 4], src_stride=[0, 0, 0, 1],
           dst_stride=[0, 0, 0, 1])
    assert problems(b.build(), cfg) == [
        "core 0 engine dma0 instruction 0: load needs off-chip memory (groq-like-sram has "
        "memory: none; move data between cores with copy)"]


def test_descriptor_dimensions_beyond_max_dims_must_be_1_and_copy_targets_a_program_core():
    data = config.read_yaml((config.CONFIG_DIR / "teach-4x4.yaml").read_text(), "teach")
    data["cores"]["dma"]["max_dims"] = 2
    data["name"] = "teach-2d"
    cfg = config.from_dict(data, "teach-2d")
    b = ProgramBuilder(1, 1)
    b.emit(0, Engine.DMA, op=Op.COPY, dtype=2, dst_core=0, shape=[2, 1, 4, 4])
    b.emit(0, Engine.DMA, op=Op.COPY, dtype=2, dst_core=1, shape=[1, 1, 4, 4])
    assert problems(b.build(), cfg) == [
        "core 0 engine dma0 instruction 0: copy shape=2,1,4,4 has more than 2 dimensions "
        "(cores.dma.max_dims = 2 on teach-2d: the outer 2 must be 1)",
        "core 0 engine dma0 instruction 1: copy dst_core=1 is not a core of the program (0 to 0)"]


def test_int4_innermost_runs_must_be_whole_bytes():
    data = config.read_yaml((config.CONFIG_DIR / "teach-4x4.yaml").read_text(), "teach")
    data["cores"]["systolic"].update(input_dtype="int4", weight_dtype="int4")
    cfg = config.from_dict(data, "teach-int4")
    text = (".program p cores=1 dma_engines=1\n.queue core=0 engine=matrix\n"
            "    ldw k=4 n=4 src_stride=2,0 dtype=int4\n"
            "    mm m=2 k=4 n=4 src_stride=2,0 dst_stride=16,0 dtype=int4 dtype2=int32\n"
            ".queue core=0 engine=dma0\n"
            "    load shape=2,4 src_stride=2,0 dst_stride=2,0 dtype=int4\n")
    assert problems(assemble(text, "q.tasm"), cfg) == []
    found = problems(assemble(text.replace("shape=2,4", "shape=2,3"), "q.tasm"), cfg)
    assert found == ["q.tasm: line 6: load src: an innermost run of 3 int4 is 1.5 bytes (runs of "
                     "int4 are whole bytes: a multiple of 2 elements)"]
    found = problems(assemble(text.replace("n=4 src_stride=2,0 dtype=int4\n",
                                           "n=3 src_stride=2,0 dtype=int4\n"), "q.tasm"), cfg)
    assert "q.tasm: line 3: ldw src: an innermost run of 3 int4 is 1.5 bytes (runs of int4 are " \
           "whole bytes: a multiple of 2 elements)" in found


def test_problems_lists_all_and_validate_raises_the_first_with_a_count(teach):
    text, _ = planted("k=4 n=4 src_stride=4,0 dtype=int8\n", "k=5 n=5 src_stride=4,0 dtype=int8\n")
    program = assemble(text, "gemm.tasm")
    found = problems(program, teach)
    assert len(found) == 3        # k and n of the ldw, then the mm that disagrees with it
    first = r"^gemm\.tasm: line 49: ldw k=5 .*\(and 2 more problems\)$"
    with pytest.raises(ProgramError, match=first):
        validate(program, teach)


def test_broken_queue_tables_are_reported_before_anything_else(teach):
    program = ProgramBuilder(1, 1).build()
    program.queue_len[0, 0] = 3
    assert problems(program, teach) == [
        "program: queue core 0 engine matrix spans records 0 to 2 (within 0 to -1)"]


# --------------------------------------------------------------------------------------------
# The extent formula, against enumerating every element
# --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=4, max_size=4),
       stride=st.lists(st.integers(-40, 40), min_size=4, max_size=4),
       bits=st.sampled_from([8, 16, 32]), addr=st.integers(-100, 100))
def test_extent_is_the_lowest_and_highest_byte_over_all_elements(shape, stride, bits, addr):
    operand = _Operand("src", "sram", np.zeros(1, np.int64), np.zeros(1, np.int64),
                       np.array([addr]), np.array([shape]), np.array([stride]), np.array([bits]))
    touched = set()
    for idx in itertools.product(*(range(s) for s in shape)):
        start = addr + sum(i * t for i, t in zip(idx, stride))
        touched.update(range(start, start + bits // 8))
    lo, hi = _extent(operand)
    assert (lo[0], hi[0]) == _extent_exact(operand, 0) == (min(touched), max(touched))


def test_a_packed_int4_run_covers_half_a_byte_per_element():
    operand = _Operand("src", "sram", np.zeros(1, np.int64), np.zeros(1, np.int64),
                       np.array([100]), np.array([[1, 1, 3, 8]]), np.array([[0, 0, -16, 99]]),
                       np.array([4]))
    assert _extent_exact(operand, 0) == (100 - 32, 100 + 3)
    assert tuple(x[0] for x in _extent(operand)) == (68, 103)


def test_huge_strides_are_out_of_range_not_wrapped(teach):
    b = ProgramBuilder(1, 1)
    b.emit(0, Engine.VECTOR, op=Op.VOP, vop=VecOp.EXP, dtype=2, shape=[1, 1, 2**31 - 1, 2],
           src_stride=[0, 0, 2**62, 1], dst_stride=[0, 0, -(2**62), 1], flags=Flag.BCAST_IMM)
    found = problems(b.build(), teach)
    assert [m.split(": ")[1][:16] for m in found] == ["exp flags=bcast_", "exp src touches ",
                                                       "exp dst touches "]
    hi = (2**31 - 2) * 2**62 + 1      # (rows - 1) * row stride + (cols - 1) * 1 + 1 byte - 1
    assert f"sram bytes 0x0 to {hi:#x}" in found[1]
    assert f"sram bytes {-(2**31 - 2) * 2**62:#x}".replace("0x-", "-0x") in found[2]


def test_vector_operands_match_the_functional_model(teach):
    """Element stride 0 means contiguous elements; a bcast_row src2 is one contiguous vector
    with a value per row (as tilesim.arch.chip reads them)."""
    text = (".program v cores=1 dma_engines=1\n.queue core=0 engine=vector\n"
            "    exp src=0xfffc shape=1,4 dtype=int8\n"
            "    exp src=0xfffd shape=1,4 dtype=int8\n"
            "    add src2=0xfff8 shape=8,2 src_stride=2,1 dst_stride=2,1 dtype=int8 "
            "flags=bcast_row\n"
            "    add src2=0xfffa shape=8,2 src_stride=2,1 dst_stride=2,1 dtype=int8 "
            "flags=bcast_row\n")
    assert problems(assemble(text, "v.tasm"), teach) == [
        "v.tasm: line 4: exp src touches sram bytes 0xfffd to 0x10000 (core 0's sram is 0x0 to "
        "0xffff, 64 KiB on teach-4x4)",
        "v.tasm: line 6: add src2 touches sram bytes 0xfffa to 0x10001 (core 0's sram is 0x0 to "
        "0xffff, 64 KiB on teach-4x4)"]


def test_the_example_in_docs_isa_md_is_the_example_file_and_its_quoted_error_is_real(teach):
    doc = (EXAMPLE.parents[3] / "docs/isa.md").read_text()
    block = doc.split("```tasm\n")[1].split("```")[0]

    def statements(text):
        return [s.split() for s in (line.split("#")[0] for line in text.split("\n")) if s.strip()]

    assert statements(block) == statements(GEMM)
    assert problems(assemble(block, "gemm.tasm"), teach) == []
    quoted = " ".join(doc.split("`validate` reports\n\n```\n")[1].split("```")[0].split())
    broken = assemble(block.replace("wait=full1>=4", "wait=full1>=5"), "gemm.tasm")
    with pytest.raises(ProgramError) as e:
        validate(broken, teach)
    assert str(e.value) == quoted
