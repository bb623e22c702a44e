"""Datatypes of the tile machine: their widths and how values are stored in SRAM and DRAM.

A datatype has a name used in configs and assembly, a width in bits, whether it is an integer,
and the numpy dtype used to hold *decoded* values in functional mode. Storage is packed: int4
takes half a byte (two per byte, low nibble first); fp8 and bf16 are stored as their raw bit
patterns (uint8, uint16), because numpy has no native type for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    code: int            # small integer used in instruction records
    bits: int            # storage width in bits
    is_int: bool
    compute: type        # numpy type that holds decoded values exactly (int64/float32/float64)

    @property
    def bytes(self) -> float:
        """Bytes per element (0.5 for int4)."""
        return self.bits / 8


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("int4", 1, 4, True, np.int64),
        DType("int8", 2, 8, True, np.int64),
        DType("int32", 3, 32, True, np.int64),
        DType("fp8e4m3", 4, 8, False, np.float32),
        DType("fp8e5m2", 5, 8, False, np.float32),
        DType("bf16", 6, 16, False, np.float32),
        DType("fp16", 7, 16, False, np.float32),
        DType("fp32", 8, 32, False, np.float32),
    )
}
"""Every datatype tilesim knows, by name. Code 0 is reserved for 'none'."""

BY_CODE: dict[int, DType] = {d.code: d for d in DTYPES.values()}

ARRAY_INPUT_DTYPES = ("int4", "int8", "fp8e4m3", "fp8e5m2", "bf16", "fp16", "fp32")
"""Datatypes the systolic array accepts for activations and weights."""

ACCUMULATOR_DTYPES = ("int32", "fp16", "bf16", "fp32")
"""Datatypes the systolic array may accumulate in."""


def dtype(name: str) -> DType:
    """Look up a datatype by name; KeyError lists what is allowed."""
    try:
        return DTYPES[name]
    except KeyError:
        raise KeyError(f"unknown datatype {name!r} (allowed: {', '.join(DTYPES)})") from None


def accumulator_ok(input_dtype: str, acc_dtype: str) -> bool:
    """Integer inputs accumulate in int32; floating inputs in a floating type at least as wide."""
    a, c = DTYPES[input_dtype], DTYPES[acc_dtype]
    if a.is_int:
        return acc_dtype == "int32"
    return not c.is_int and c.bits >= min(a.bits, 16)
