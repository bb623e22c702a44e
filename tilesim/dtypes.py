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


# --------------------------------------------------------------------------------------------
# Floating-point formats and rounding (round to nearest, ties to even)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: sign, ``exp_bits`` exponent bits, ``man_bits`` stored
    mantissa bits. ``has_inf``: IEEE-style (the top exponent is inf/NaN) or, for OCP fp8e4m3
    ("E4M3FN"), no infinities and only the all-ones pattern is NaN."""

    name: str
    exp_bits: int
    man_bits: int
    has_inf: bool

    @property
    def precision(self) -> int:
        """Significand bits including the implicit leading one."""
        return self.man_bits + 1

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number; subnormals step by 2**(emin - man_bits)."""
        return 1 - self.bias

    @property
    def max_finite(self) -> float:
        """The largest finite value."""
        if self.has_inf:   # the top exponent field is reserved for inf and NaN
            return (2 - 2.0 ** -self.man_bits) * 2.0 ** self.bias
        # E4M3FN: the top exponent field holds numbers too, except mantissa all ones (NaN)
        emax = 2 ** self.exp_bits - 1 - self.bias
        return (2 - 2.0 ** (1 - self.man_bits)) * 2.0 ** emax


FLOAT_FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        # OCP 8-bit Floating Point Specification (OFP8) rev 1.0: E4M3 has no infinities and a
        # single NaN mantissa (largest finite 1.75 * 2**8 = 448); E5M2 follows IEEE rules
        # (largest finite 1.75 * 2**15 = 57344).
        FloatFormat("fp8e4m3", 4, 3, False),
        FloatFormat("fp8e5m2", 5, 2, True),
        FloatFormat("bf16", 8, 7, True),       # bfloat16: fp32's exponent, 7 mantissa bits
        FloatFormat("fp16", 5, 10, True),      # IEEE 754 binary16
        FloatFormat("fp32", 8, 23, True),      # IEEE 754 binary32
    )
}
"""The floating-point datatypes, by name."""

INT_RANGES: dict[str, tuple[int, int]] = {"int4": (-8, 7), "int8": (-128, 127),
                                          "int32": (-2**31, 2**31 - 1)}
"""Two's-complement range of each integer datatype."""


def round_to_format(x, fmt: FloatFormat, *, saturate: bool = False) -> np.ndarray:
    """Round float64 values to ``fmt`` (nearest, ties to even); returns float64.

    The result is exact: the value is split into significand and exponent with ``np.frexp``,
    the significand is scaled to an integer count of the format's quanta and rounded with
    ``np.rint`` (which rounds halves to even), and the exponent is clamped at ``emin`` so that
    subnormals keep their fixed quantum. A result above ``max_finite`` overflows to +-inf
    (NaN for fp8e4m3, which has no infinities), or to +-max_finite when ``saturate``.
    NaN stays NaN; infinities stay infinite (or saturate).
    """
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)                                    # x = m * 2**e, 0.5 <= |m| < 1
    e = np.maximum(e, fmt.emin + 1)                      # below emin: the subnormal quantum
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.ldexp(np.rint(np.ldexp(x, fmt.precision - e)), e - fmt.precision)
        over = np.abs(q) > fmt.max_finite
        if saturate:
            q = np.where(over, np.copysign(fmt.max_finite, x), q)
        elif over.any():
            big = np.inf if fmt.has_inf else np.nan
            q = np.where(over & np.isfinite(x), np.copysign(big, x), q)
            if not fmt.has_inf:
                q = np.where(np.isinf(x), np.nan, q)
    return np.where(np.isnan(x), np.nan, q)


def quantize(x, dtype_name: str, *, saturate: bool = False) -> np.ndarray:
    """Values rounded to a datatype, held in its ``compute`` numpy type.

    Floating types round to nearest, ties to even (see :func:`round_to_format`); the result is
    float32, which holds every fp8, bf16, fp16 and fp32 value exactly. Integer types round to
    nearest, ties to even, and then saturate to the type's range (the usual requantisation
    step); the result is int64. ``saturate`` only matters for floats: clamp overflows to the
    largest finite value instead of infinity (or NaN for fp8e4m3). Use
    :func:`check_representable` to reject values instead of rounding them.
    """
    d = dtype(dtype_name)
    x = np.asarray(x, dtype=np.float64)
    if d.is_int:
        lo, hi = INT_RANGES[d.name]
        if np.isnan(x).any():
            raise ValueError(f"NaN cannot be quantized to {d.name}")
        return np.clip(np.rint(x), lo, hi).astype(np.int64)
    return round_to_format(x, FLOAT_FORMATS[d.name], saturate=saturate).astype(np.float32)


def check_representable(x, dtype_name: str) -> np.ndarray | None:
    """None if every value is exactly a ``dtype_name`` value, else the flat index of the first
    that is not (a non-integer or out-of-range value for an integer type; a value that rounding
    would change, for a float type)."""
    d = dtype(dtype_name)
    x = np.asarray(x, dtype=np.float64).ravel()
    if d.is_int:
        lo, hi = INT_RANGES[d.name]
        ok = np.isfinite(x) & (x == np.rint(x)) & (x >= lo) & (x <= hi)
    else:
        q = round_to_format(x, FLOAT_FORMATS[d.name])
        ok = (q == x) | (np.isnan(q) & np.isnan(x))
    bad = np.flatnonzero(~ok)
    return None if bad.size == 0 else int(bad[0])


def all_values(dtype_name: str) -> np.ndarray:
    """Every finite value of a float format of at most 16 bits, decoded from every bit pattern,
    sorted, without duplicates (tests check rounding against it by brute force)."""
    fmt = FLOAT_FORMATS[dtype_name]
    if 1 + fmt.exp_bits + fmt.man_bits > 16:
        raise ValueError(f"{dtype_name} has too many values to list (16-bit formats at most)")
    bits = np.arange(2 ** (fmt.exp_bits + fmt.man_bits), dtype=np.int64)   # sign added below
    e_field = bits >> fmt.man_bits
    mant = (bits & (2 ** fmt.man_bits - 1)).astype(np.float64)
    normal = e_field > 0
    v = np.where(normal, (1 + mant / 2 ** fmt.man_bits) * np.exp2(e_field - fmt.bias),
                 mant * 2.0 ** (fmt.emin - fmt.man_bits))
    v = v[v <= fmt.max_finite]        # drops inf/NaN patterns (and E4M3FN's NaN)
    return np.unique(np.concatenate([v, -v]))


# --------------------------------------------------------------------------------------------
# Values <-> stored bytes (functional mode)
# --------------------------------------------------------------------------------------------


def _fp8_table(exp_bits: int, man_bits: int, ieee_specials: bool) -> np.ndarray:
    """float32 value of every fp8 code (NaN where the format has NaN)."""
    bias = 2 ** (exp_bits - 1) - 1
    codes = np.arange(256)
    sign = np.where(codes >> 7, -1.0, 1.0)
    e = (codes >> man_bits) & (2**exp_bits - 1)
    m = codes & (2**man_bits - 1)
    frac = m / 2**man_bits
    val = np.where(e == 0, frac * 2.0 ** (1 - bias), (1 + frac) * 2.0 ** (e - bias))
    if ieee_specials:   # e5m2: exponent all ones is inf (m == 0) or NaN
        val = np.where(e == 2**exp_bits - 1, np.where(m == 0, np.inf, np.nan), val)
    else:               # e4m3 (OCP "fn"): only S.1111.111 is NaN, no infinities
        val = np.where((e == 2**exp_bits - 1) & (m == 2**man_bits - 1), np.nan, val)
    return (sign * val).astype(np.float32)


_FP8 = {"fp8e4m3": _fp8_table(4, 3, False), "fp8e5m2": _fp8_table(5, 2, True)}


def _fp8_encode(x: np.ndarray, name: str) -> np.ndarray:
    """Round to nearest even (round_to_format), saturating to the largest finite value (the
    'satfinite' conversion ML hardware uses); NaN -> the format's NaN (0x7F)."""
    q = round_to_format(x, FLOAT_FORMATS[name], saturate=True)
    pos = _FP8[name][:128].astype(np.float64)
    finite = np.isfinite(pos)
    vals, codes = pos[finite], np.arange(128)[finite]
    order = np.argsort(vals, kind="stable")
    vals, codes = vals[order], codes[order]
    a = np.abs(np.nan_to_num(q))
    code = codes[np.clip(np.searchsorted(vals, a), 0, len(vals) - 1)].astype(np.uint8)
    code = np.where(np.signbit(q), code | 0x80, code).astype(np.uint8)
    return np.where(np.isnan(q), np.uint8(0x7F), code).astype(np.uint8)


def encode(values, name: str) -> np.ndarray:
    """Values -> stored bytes (uint8, packed). Floats round to nearest even; integers must fit
    the type (ValueError otherwise); int4 packs two per byte, low nibble first."""
    d = dtype(name)
    v = np.asarray(values).ravel()
    if d.is_int:
        if v.dtype.kind == "f" and not np.all(np.isfinite(v) & (v == np.round(v))):
            raise ValueError(f"{name} holds integers; got non-integer values")
        lo, hi = -(2 ** (d.bits - 1)), 2 ** (d.bits - 1) - 1
        iv = v.astype(np.int64)
        if iv.size and (iv.min() < lo or iv.max() > hi):
            raise ValueError(f"{name} holds {lo}..{hi}; got values {iv.min()}..{iv.max()}")
        if name == "int4":
            nib = (iv & 0xF).astype(np.uint8)
            if nib.size % 2:
                nib = np.append(nib, np.uint8(0))
            return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)
        return iv.astype({8: np.int8, 32: np.int32}[d.bits]).view(np.uint8)
    if name in ("fp8e4m3", "fp8e5m2"):
        return _fp8_encode(v.astype(np.float64), name)
    # round once, from the exact input, then store the (now exact) value's bits
    f = round_to_format(v.astype(np.float64), FLOAT_FORMATS[name]).astype(np.float32)
    if name == "fp32":
        return f.view(np.uint8)
    if name == "fp16":
        return f.astype(np.float16).view(np.uint8)
    b = (f.view(np.uint32) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), b).astype(np.uint16).view(np.uint8)


def decode(raw: np.ndarray, name: str, count: int) -> np.ndarray:
    """Stored bytes -> ``count`` values (int64 for integers, float32 for floats)."""
    d = dtype(name)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if name == "int4":
        nib = np.empty(raw.size * 2, np.int64)
        nib[0::2], nib[1::2] = raw & 0xF, raw >> 4
        nib = np.where(nib > 7, nib - 16, nib)
        return nib[:count]
    if d.is_int:
        return raw.view({8: np.int8, 32: np.int32}[d.bits])[:count].astype(np.int64)
    if name == "fp32":
        return raw.view(np.float32)[:count].copy()
    if name == "fp16":
        return raw.view(np.float16)[:count].astype(np.float32)
    if name == "bf16":
        return (raw.view(np.uint16)[:count].astype(np.uint32) << 16).view(np.float32)
    return _FP8[name][raw[:count]]
