"""Datatype rounding: nearest, ties to even, checked against numpy (fp16, fp32) and against a
brute-force search over every value of the format (fp8, bf16)."""
from __future__ import annotations

import numpy as np
import pytest

from tilesim import dtypes
from tilesim.dtypes import FLOAT_FORMATS, all_values, check_representable, quantize, round_to_format


def _samples(seed: int, n: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * np.exp2(rng.integers(-40, 40, n))
    return np.concatenate([x, [0.0, -0.0, 1.0, -1.5, 2.0**-149, 2.0**-24, 3 * 2.0**-25]])


def _mantissa_even(v: float, fmt) -> bool:
    """Whether v's last significand bit (in fmt) is 0."""
    if v == 0:
        return True
    _, e = np.frexp(abs(v))
    e = max(e, fmt.emin + 1)
    return int(np.ldexp(abs(v), fmt.precision - e)) % 2 == 0


def _brute_force(x: np.ndarray, values: np.ndarray, fmt) -> np.ndarray:
    """The nearest of ``values`` (every value of the format, sorted); on a tie, the one with
    an even last significand bit."""
    i = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
    lo, hi = values[i - 1], values[i]
    pick = np.where(x - lo < hi - x, lo, hi)
    for k in np.flatnonzero((x - lo) == (hi - x)):
        pick[k] = lo[k] if _mantissa_even(lo[k], fmt) else hi[k]
    return pick


@pytest.mark.parametrize("name", ["fp8e4m3", "fp8e5m2", "bf16"])
def test_rounding_equals_brute_force_nearest_even(name):
    values = all_values(name)
    x = _samples(1)
    x = x[np.abs(x) <= values.max()]               # overflow is tested separately
    # every midpoint between neighbours, which must go to the even one
    mids = (values[:-1] + values[1:]) / 2
    x = np.concatenate([x, mids])
    got = round_to_format(x, FLOAT_FORMATS[name])
    np.testing.assert_array_equal(got, _brute_force(x, values, FLOAT_FORMATS[name]))


def test_fp16_and_fp32_rounding_equal_numpys_conversions():
    x = _samples(2)
    with np.errstate(over="ignore"):
        for name, np_t in (("fp16", np.float16), ("fp32", np.float32)):
            got = round_to_format(x, FLOAT_FORMATS[name])
            np.testing.assert_array_equal(got, x.astype(np_t).astype(np.float64))


def test_overflow_goes_to_inf_or_nan_or_saturates():
    f8 = FLOAT_FORMATS["fp8e4m3"]
    assert f8.max_finite == 448 and FLOAT_FORMATS["fp8e5m2"].max_finite == 57344
    assert FLOAT_FORMATS["fp16"].max_finite == 65504
    # 464 is halfway between 448 (mantissa 110, even) and 480 (would be mantissa 111): 448
    assert round_to_format(464.0, f8) == 448
    assert np.isnan(round_to_format(470.0, f8))            # E4M3FN has no infinity
    assert round_to_format(470.0, f8, saturate=True) == 448
    assert round_to_format(-1e6, FLOAT_FORMATS["fp16"]) == -np.inf
    assert round_to_format(65519.0, FLOAT_FORMATS["fp16"]) == 65504
    assert np.isinf(round_to_format(65520.0, FLOAT_FORMATS["fp16"]))


def test_quantize_integers_rounds_half_even_and_saturates():
    np.testing.assert_array_equal(quantize([0.5, 1.5, -2.5, 300, -300], "int8"), [0, 2, -2, 127, -128])
    np.testing.assert_array_equal(quantize([7.6, -9], "int4"), [7, -8])
    assert quantize([1.1], "bf16").dtype == np.float32


def test_check_representable_points_at_the_first_bad_value():
    assert check_representable([1, 2, 127], "int8") is None
    assert check_representable([1, 2.5, 300], "int8") == 1
    assert check_representable([1, 300], "int8") == 1
    assert check_representable([0.1], "bf16") == 0
    assert check_representable([0.5, 1.75], "fp8e4m3") is None


def test_every_float_dtype_has_a_format():
    assert {n for n, d in dtypes.DTYPES.items() if not d.is_int} == set(FLOAT_FORMATS)


@pytest.mark.parametrize("name", ["fp8e4m3", "fp8e5m2", "bf16", "fp16"])
def test_encode_decode_every_value_round_trips(name):
    """Every finite value of the format survives values -> stored bits -> values."""
    v = dtypes.all_values(name)
    assert np.array_equal(dtypes.decode(dtypes.encode(v, name), name, v.size), v.astype(np.float32))


@pytest.mark.parametrize("name", ["fp8e4m3", "fp8e5m2", "bf16", "fp16", "fp32"])
def test_encode_rounds_like_quantize(name):
    x = np.random.default_rng(0).normal(size=2000) * 100
    got = dtypes.decode(dtypes.encode(x, name), name, x.size)
    assert np.array_equal(got, dtypes.quantize(x, name, saturate=True))


@pytest.mark.parametrize("name", ["int4", "int8", "int32"])
def test_integer_storage_round_trips_and_rejects_overflow(name):
    lo, hi = dtypes.INT_RANGES[name]
    x = np.array([lo, -1, 0, 1, hi, 3])
    assert np.array_equal(dtypes.decode(dtypes.encode(x, name), name, x.size), x)
    with pytest.raises(ValueError):
        dtypes.encode([hi + 1], name)
