"""The tile instruction set: opcodes and records, programs, the assembler and the validator."""
from tilesim.isa.asm import assemble, disassemble
from tilesim.isa.opcodes import INSTR_DTYPE, Engine, Flag, Op, VecOp
from tilesim.isa.program import Program, ProgramBuilder
from tilesim.isa.validate import problems, validate

__all__ = ["assemble", "disassemble", "validate", "problems", "Program", "ProgramBuilder",
           "Op", "VecOp", "Flag", "Engine", "INSTR_DTYPE"]
