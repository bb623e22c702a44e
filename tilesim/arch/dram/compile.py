"""Compile a DRAM standard, once, into the numbers and arrays the numba controller reads.

``resolve_timings(std, rate, overrides)`` gives the named timings in CK cycles:

1. pick the preset: the one at exactly ``rate``, else the slowest preset faster than ``rate``,
   else the fastest one;
2. kind ``ck`` keeps the preset's cycles; kind ``ns`` converts the preset's cycles to ns at the
   preset's tCK and rounds up to the new tCK, ``ceil(n_ref * tCK_ref / tCK)`` (so a preset used at
   its own rate is exact);
3. the config's ``timing_overrides`` replace values (cycles of the new clock);
4. ``expr`` timings are evaluated, then each ``at_least`` floor is applied to timings the user
   did not override (so overriding nRAS alone lifts nRC to nRAS + nRP, but an explicit nRC
   below it is an error: :func:`check_timings`).

``compile_standard`` then evaluates every constraint row's latency expression with only the
named timings in scope (unknown names and negative results are errors) and folds the rows into
``lat[level, before, after]``: the minimum distance in cycles, or ``NO_CONSTRAINT``. Window
rows (tFAW) become separate arrays. This module is plain Python; it never imports numba.
"""
from __future__ import annotations

import ast
import functools
import math
import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from tilesim.arch.dram.standards import (
    ALL, COMMANDS, LEVELS, ORDERING_RULES, TIMING_NAMES, Standard, TimingPreset,
)
from tilesim.errors import ConfigError

NO_CONSTRAINT = -(2**40)
"""``lat`` entry for a pair of commands with no constraint at that level (t + it never binds)."""


# ------------------------------------------------------------------------------------------
# Expressions: integers, names of timings, + - * // and max()/min(). Nothing else.
# ------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b}


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _parse(expr: str) -> ast.Expression:
    """``ast.parse`` of an expression, once per text and one thread at a time: on this
    machine's CPython 3.11.7 two threads parsing at once (a threaded Dask sweep building two
    configs) raised 'SystemError: AST constructor recursion depth mismatch'. The trees are only
    read."""
    with _PARSE_LOCK:
        return ast.parse(expr, mode="eval")


def eval_expr(expr: str, names: Mapping[str, int]) -> int:
    """Evaluate a latency expression with only ``names`` in scope; ValueError says why not."""
    try:
        tree = _parse(expr)
    except SyntaxError:
        raise ValueError(f"{expr!r} is not an expression") from None

    def ev(node) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"{expr!r} names {node.id!r}, which is not a timing of this "
                                 f"standard")
            return int(names[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("max", "min") and node.args and not node.keywords):
            vals = [ev(a) for a in node.args]
            return max(vals) if node.func.id == "max" else min(vals)
        raise ValueError(f"{expr!r}: only integers, timing names, + - * // and max/min are "
                         f"allowed")

    return ev(tree)


def expr_names(expr: str) -> set[str]:
    """Timing names an expression refers to."""
    return {n.id for n in ast.walk(_parse(expr)) if isinstance(n, ast.Name)
            and n.id not in ("max", "min")}


# ------------------------------------------------------------------------------------------
# Timings
# ------------------------------------------------------------------------------------------


def lookup(name: str) -> Standard:
    """A standard (or comparison variant) by name; ConfigError with a did-you-mean."""
    import difflib

    if name in ALL:
        return ALL[name]
    hint = difflib.get_close_matches(str(name), list(ALL), n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"standard: {name!r} is not a DRAM standard tilesim models (one of "
                      f"{', '.join(ALL)}{extra})")


def pick_preset(std: Standard, rate_gbps: float) -> TimingPreset:
    """The preset at ``rate_gbps``, else the slowest faster one, else the fastest."""
    presets = sorted(std.presets, key=lambda p: p.rate_gbps)
    for p in presets:
        if math.isclose(p.rate_gbps, rate_gbps, rel_tol=1e-9):
            return p
    faster = [p for p in presets if p.rate_gbps > rate_gbps]
    return faster[0] if faster else presets[-1]


def _rerounded(n_ref: int, tck_ref: float, tck: float) -> int:
    """Cycles of ``tck`` covering ``n_ref`` cycles of ``tck_ref`` (an ns delay), at least 1."""
    return max(1, math.ceil(n_ref * tck_ref / tck - 1e-6))


def resolve_timings(std: Standard, rate_gbps: float | None = None,
                    overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """Named timings in CK cycles at ``rate_gbps`` (default: the standard's), with overrides.

    Does not check the ordering rules; :func:`check_timings` does."""
    rate = rate_gbps or std.default_rate_gbps
    overrides = dict(overrides or {})
    preset = pick_preset(std, rate)
    tck, tck_ref = std.tck_ns(rate), std.tck_ns(preset.rate_gbps)
    out: dict[str, int] = {}
    for spec in std.timings:
        if spec.kind == "expr":
            continue
        n_ref = preset.values[spec.name]
        out[spec.name] = n_ref if spec.kind == "ck" else _rerounded(n_ref, tck_ref, tck)
    out.update(overrides)
    # Derived timings, in dependency order (a few passes suffice for these short chains).
    pending = [s for s in std.timings if s.kind == "expr" and s.name not in overrides]
    for _ in range(len(pending) + 1):
        still = []
        for s in pending:
            if expr_names(s.expr) <= out.keys():
                out[s.name] = eval_expr(s.expr, out)
            else:
                still.append(s)
        pending = still
    if pending:
        raise ValueError(f"{std.name}: cannot resolve {[s.name for s in pending]}")
    for s in std.timings:
        if s.at_least and s.name not in overrides:
            out[s.name] = max(out[s.name], eval_expr(s.at_least, out))
    return {name: out[name] for name in TIMING_NAMES}


def check_timings(std: Standard, timings: Mapping[str, int], overridden: set[str],
                  fail: Callable[[str, object, str], None]) -> None:
    """The ordering rules (standards.ORDERING_RULES) and the burst rule; ``fail(key, value,
    allowed)`` is called for the first broken one, naming ``timing_overrides.<key>``: the
    overridden side of the rule when there is one."""
    for name in TIMING_NAMES:
        if timings[name] < 1:
            fail(f"timing_overrides.{name}", timings[name], "at least 1 cycle")
    if timings["nBL"] < std.min_nbl:
        fail("timing_overrides.nBL", timings["nBL"],
             f"at least {std.min_nbl} cycles: a BL{std.burst_length} burst at "
             f"{std.bits_per_ck} beats per CK")
    for rule in ORDERING_RULES:
        need = eval_expr(rule.at_least, timings)
        have = timings[rule.timing]
        if have >= need:
            continue
        rhs = sorted(expr_names(rule.at_least) & overridden)
        key = rule.timing if rule.timing in overridden or not rhs else rhs[0]
        shown = " + ".join(f"{n} {timings[n]}" for n in sorted(expr_names(rule.at_least)))
        if key == rule.timing:
            fail(f"timing_overrides.{key}", have,
                 f"at least {rule.at_least} = {need} for {std.name} ({rule.why})")
        fail(f"timing_overrides.{key}", timings[key],
             f"a value keeping {rule.timing} {have} >= {rule.at_least} ({shown}) for "
             f"{std.name} ({rule.why}); override {rule.timing} too")


# ------------------------------------------------------------------------------------------
# Compilation into arrays
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledStandard:
    """A standard at one data rate with overrides applied: timings and constraint arrays."""

    std: Standard
    rate_gbps: float
    tck_ns: float
    timings: Mapping[str, int]               # named timings, CK cycles
    lat: np.ndarray                          # int64[level, before, after]
    win_before: np.ndarray                   # int64[n_win]: bitmask over COMMANDS
    win_after: np.ndarray                    # int64[n_win]
    win_len: np.ndarray                      # int64[n_win]
    win_lat: np.ndarray                      # int64[n_win]
    preset_source: str

    @property
    def peak_gbps_per_channel(self) -> float:
        """Bytes of one burst per nBL cycles, in GB/s."""
        return self.std.granule_bytes / (self.timings["nBL"] * self.tck_ns)


def compile_standard(std: Standard | str, rate_gbps: float | None = None,
                     overrides: Mapping[str, int] | None = None) -> CompiledStandard:
    """Resolve timings, check their ordering, fold the constraint rows into arrays.

    Raises ConfigError (one line, naming ``timing_overrides.<key>``) for a bad override."""
    if isinstance(std, str):
        std = lookup(std)
    rate = rate_gbps or std.default_rate_gbps
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TIMING_NAMES))
    if unknown:
        raise ConfigError(f"timing_overrides.{unknown[0]}: unknown timing (allowed: "
                          f"{', '.join(TIMING_NAMES)})")
    timings = resolve_timings(std, rate, overrides)

    def fail(key, value, allowed):
        raise ConfigError(f"{key}: {value} is not allowed ({allowed})")

    check_timings(std, timings, set(overrides), fail)
    cmd = {c: i for i, c in enumerate(COMMANDS)}
    lat = np.full((len(LEVELS), len(COMMANDS), len(COMMANDS)), NO_CONSTRAINT, dtype=np.int64)
    wb, wa, wl, wt = [], [], [], []
    for row in std.constraints:
        try:
            value = eval_expr(row.latency, timings)
        except ValueError as e:
            raise ConfigError(f"{std.name}: constraint {row.before}->{row.after}: {e}") from None
        if value < 0:
            raise ConfigError(f"{std.name}: constraint {row.before}->{row.after} at "
                              f"{row.level}: {row.latency} = {value} is negative")
        if row.level not in LEVELS:
            raise ConfigError(f"{std.name}: constraint level {row.level!r} is not one of "
                              f"{', '.join(LEVELS)}")
        if row.window > 1:
            if row.level != "channel":
                raise ConfigError(f"{std.name}: window constraints apply per channel only")
            wb.append(sum(1 << cmd[c] for c in row.before))
            wa.append(sum(1 << cmd[c] for c in row.after))
            wl.append(row.window)
            wt.append(value)
            continue
        lv = LEVELS.index(row.level)
        for b in row.before:
            for a in row.after:
                lat[lv, cmd[b], cmd[a]] = max(lat[lv, cmd[b], cmd[a]], value)
    arr = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return CompiledStandard(std, rate, std.tck_ns(rate), MappingProxyType(timings), lat,
                            arr(wb), arr(wa), arr(wl), arr(wt),
                            pick_preset(std, rate).source)
