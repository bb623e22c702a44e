"""Energy per action (Accelergy's ERT idea): one row per action, each with its source.

A run's energy is the sum over actions of (count x pJ per action). The report writes the table
it used next to the results so every pJ can be traced to one row. Units are pJ throughout.
DRAM command energy belongs to the DRAM standard (tilesim/arch/dram/standards.py); rows here
that name DRAM scale or replace it.

Sources are ../shared/reference/energy_cost_chips.md ("ECC" below) and
../shared/reference/noc.md. Sureness letters follow ECC: V verified, S secondary, R recalled and
unverified, D derived here (derivation in the source text), A assumed (no source found: set it
for your process).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class EnergyRow:
    pj: float
    unit: str       # what one action is
    source: str


def _table(rows: dict[str, EnergyRow]) -> MappingProxyType:
    return MappingProxyType(dict(sorted(rows.items())))


# Horowitz, ISSCC 2014, 45 nm (ECC section 3.1). A MAC is one multiply at the input width plus
# one add at the accumulator width.
HOROWITZ_45NM = _table({
    "mac_int4_pj": EnergyRow(0.15, "MAC, int4 x int4 -> int32", "D: int8 mult 0.2 / 4 (multiplier ~ bits^2) + int32 add 0.1 (ECC 3.1)"),
    "mac_int8_pj": EnergyRow(0.3, "MAC, int8 x int8 -> int32", "D: int8 mult 0.2 + int32 add 0.1 (ECC 3.1, V)"),
    "mac_fp8_pj": EnergyRow(1.2, "MAC, fp8 x fp8 -> fp32", "D: fp16 mult 1.1 x (4/11)^2 mantissa ratio + fp32 add 0.9 (ECC 3.1)"),
    "mac_bf16_pj": EnergyRow(1.4, "MAC, bf16 x bf16 -> fp32", "D: fp16 mult 1.1 x (8/11)^2 + fp32 add 0.9 (ECC 3.1)"),
    "mac_fp16_pj": EnergyRow(2.0, "MAC, fp16 x fp16 -> fp32", "D: fp16 mult 1.1 + fp32 add 0.9 (ECC 3.1, V)"),
    "mac_fp32_pj": EnergyRow(4.6, "MAC, fp32 x fp32 -> fp32", "D: fp32 mult 3.7 + fp32 add 0.9 (ECC 3.1, V)"),
    "sram_read_pj_per_byte": EnergyRow(2.5, "byte read from the scratchpad", "D: 20 pJ per 64-bit read of a 32 KB bank / 8 (ECC 3.1, R)"),
    "sram_write_pj_per_byte": EnergyRow(2.5, "byte written to the scratchpad", "D: taken equal to a read (ECC 3.1 gives reads only)"),
    "noc_pj_per_byte_hop": EnergyRow(3.2, "byte crossing one router and one 1 mm link", "D: (0.1 pJ/bit/mm x 1 mm + 0.3 pJ/bit router) x 8 (noc.md section 5)"),
    "vector_alu_pj": EnergyRow(0.9, "element op: add, mul, max, convert", "V: fp32 add 0.9 (ECC 3.1)"),
    "vector_special_pj": EnergyRow(7.4, "element op: exp, rsqrt, silu, gelu, rope", "D: about 2 fp32 multiply-adds, 2 x (3.7 + 0.9) (ECC 3.1); an assumption about the unit"),
    "static_mw_per_core": EnergyRow(0.0, "static power of one core, mW", "A: not modelled by default; set it for your process"),
})

# TPUv4i "Ten Lessons" Table 2 at 7 nm (ECC section 3.2). Most rows there are R (check against
# the paper); fp32 add 0.38 and fp32 mult 1.31 are corroborated (S).
TPUV4I_7NM = _table({
    "mac_int4_pj": EnergyRow(0.048, "MAC, int4 x int4 -> int32", "D: int8 mult 0.07 / 4 + int32 add 0.03 (ECC 3.2, R)"),
    "mac_int8_pj": EnergyRow(0.10, "MAC, int8 x int8 -> int32", "D: int8 mult 0.07 + int32 add 0.03 (ECC 3.2, R)"),
    "mac_fp8_pj": EnergyRow(0.43, "MAC, fp8 x fp8 -> fp32", "D: bf16 mult 0.21 x (4/8)^2 + fp32 add 0.38 (ECC 3.2)"),
    "mac_bf16_pj": EnergyRow(0.59, "MAC, bf16 x bf16 -> fp32", "D: bf16 mult 0.21 + fp32 add 0.38 (ECC 3.2, R/S)"),
    "mac_fp16_pj": EnergyRow(0.72, "MAC, fp16 x fp16 -> fp32", "D: fp16 mult 0.34 + fp32 add 0.38 (ECC 3.2, R/S)"),
    "mac_fp32_pj": EnergyRow(1.69, "MAC, fp32 x fp32 -> fp32", "D: fp32 mult 1.31 + fp32 add 0.38 (ECC 3.2, S)"),
    "sram_read_pj_per_byte": EnergyRow(1.06, "byte read from the scratchpad", "D: 8.5 pJ per 64-bit read of a 32 KB bank / 8 (ECC 3.2, R)"),
    "sram_write_pj_per_byte": EnergyRow(1.06, "byte written to the scratchpad", "D: taken equal to a read (ECC 3.2 gives one figure)"),
    "noc_pj_per_byte_hop": EnergyRow(3.2, "byte crossing one router and one 1 mm link", "D: (0.1 pJ/bit/mm x 1 mm + 0.3 pJ/bit router) x 8 (noc.md section 5)"),
    "vector_alu_pj": EnergyRow(0.38, "element op: add, mul, max, convert", "S: fp32 add 0.38 at 7 nm (ECC 3.2)"),
    "vector_special_pj": EnergyRow(3.4, "element op: exp, rsqrt, silu, gelu, rope", "D: about 2 fp32 multiply-adds, 2 x (1.31 + 0.38) (ECC 3.2); an assumption about the unit"),
    "static_mw_per_core": EnergyRow(0.0, "static power of one core, mW", "A: not modelled by default; set it for your process"),
})

TABLES = MappingProxyType({"tpuv4i-7nm": TPUV4I_7NM, "horowitz-45nm": HOROWITZ_45NM})
"""Named energy tables; a chip config picks one and may override rows."""

DEFAULT_TABLE = "tpuv4i-7nm"
