"""Design-space sweeps: a sweep file -> points -> Dask workers -> SQLite -> table and Pareto fronts.

A **sweep file** (YAML) names a base chip, the workloads, and the parameters to vary::

    base: blackhole-like-gddr6          # a preset name or a chip YAML (relative to this file)
    workloads:                           # a mapping, or a list of them; lists multiply out
      model: llama-3-8b
      phase: [prefill, decode]
      batch: [1, 8]
      context: 2048
    parameters:                          # dotted config key paths -> the values to try
      cores.systolic.rows: [16, 32, 64]
      cores.sram.size_bytes: ["1 MiB", "2 MiB"]
      memory.standard: [gddr6, hbm3]
      noc.link_width_bytes: {start: 32, stop: 128, factor: 2}
    mode: grid                           # every combination; or `random` with seed and samples

A parameter's values are a non-empty list or a range ``{start, stop, step}`` (arithmetic) or
``{start, stop, factor}`` (geometric), both inclusive of ``stop``. Two parameters are not
config keys but shorthands an architect reaches for:

- ``memory.channels``: the number of (pseudo-)channels; sets ``memory.devices`` to channels /
  channels per device of the point's standard (a point where it does not divide is invalid);
- ``datatypes``: the precision a point computes in: the array's input and weight datatypes
  and the model's weight and activation datatypes; the accumulator follows (int32 for
  integer types, fp32 for floating ones).

A parameter whose path ends at a block (``memory``) takes whole mappings, which replace that
block: vary ``memory`` to swap memory systems whose rates differ (switching only
``memory.standard`` keeps the base's ``data_rate_gbps``, which another standard may refuse).

Workload keys: ``model`` (preset or config.json path), ``phase``, ``batch``, ``context``,
optionally ``weight_dtype``, ``act_dtype``, ``kv_dtype``, ``routing`` (MoE tokens over experts,
graph.ROUTINGS; passed to the evaluator only when given), ``all_layers``,
``ignore_capacity``.
``mode: random`` takes ``samples`` distinct combinations of the parameter values, drawn with
``seed``; every sampled chip runs every workload.

**Checking.** The file is checked like a chip config (tilesim/config.py, whose helpers do the
work): unknown keys with a did-you-mean, each value against its key's type, range and allowed
values, empty lists and ranges; every error is one line naming the file, key, value and what
is allowed, and nothing runs. A combination that only fails as a whole (an SRAM size that is
not a multiple of the bank stripe for some array, a data rate another standard refuses) is
recorded as an *invalid* point with the config's message; a file where every point is
invalid is refused.

**Points and the store.** A point is the base config with its overrides applied, validated by
``config.from_dict``, and one workload. Its key is the sha256 of the canonical JSON of the fully
resolved config (``config.to_dict(full=True)``), the workload (the resolved model spec) and the
tilesim version (and the evaluator, when it is not the default). Results go to SQLite in WAL
mode, each committed as it arrives from its worker, so an interrupted sweep loses nothing and a
re-run skips every recorded point. A point whose evaluator raises is recorded as *failed*
with its error and the sweep goes on (``retry_failed`` runs those again). When a worker dies
(killed, out of memory), Dask runs its points again on the others; a point that kills every
worker it runs on is recorded as failed; a point lost with the cluster itself is not
recorded and runs again next time.

**Running.** Points run on Dask: by default a LocalCluster of one single-threaded worker
process per core (points are CPU-bound Python and numba, so processes, not threads); or an
existing cluster at a scheduler address, whose workers must have tilesim installed. Only this
process writes the database, so workers need not see its file. ``workers=0`` runs the points
in this process without Dask.

The evaluator is ``tilesim.simulate`` unless the file or the caller names another
``module:function`` with the same signature (tests use a fast fake).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import importlib
import itertools
import json
import math
import os
import random
import sqlite3
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tilesim import __version__
from tilesim import config as _config
from tilesim.errors import ConfigError, InputError, TilesimError

DEFAULT_EVALUATOR = "tilesim:simulate"
SWEEP_VERSION = 1
SWEEP_KEYS = ("version", "name", "base", "workloads", "parameters", "mode", "seed", "samples",
              "evaluator")
WORKLOAD_KEYS = ("model", "phase", "batch", "context", "weight_dtype", "act_dtype", "kv_dtype",
                 "routing", "all_layers", "ignore_capacity")
MODES = ("grid", "random")
VIRTUAL = {"memory.channels": "channels", "datatypes": "datatypes"}
"""Parameters that are not config keys (see the module docstring)."""
MAX_POINTS = 100_000
"""Most points a grid may have (use mode: random beyond that)."""
MAX_RANGE_VALUES = 10_000

STATUSES = ("ok", "failed", "invalid")


# --------------------------------------------------------------------------------------------
# The sweep file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One varied key: its dotted path and its values (sizes already in bytes)."""

    path: str
    values: tuple


@dataclass(frozen=True)
class Workload:
    model: str
    phase: str
    batch: int
    context: int
    weight_dtype: str | None = None
    act_dtype: str | None = None
    kv_dtype: str | None = None
    routing: str | None = None
    all_layers: bool = False
    ignore_capacity: bool = False

    def label(self) -> dict:
        """The workload as shown and stored: only the keys that were given."""
        d = {"model": self.model, "phase": self.phase, "batch": self.batch,
             "context": self.context}
        for k in ("weight_dtype", "act_dtype", "kv_dtype", "routing"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        for k in ("all_layers", "ignore_capacity"):
            if getattr(self, k):
                d[k] = True
        return d


@dataclass(frozen=True)
class Point:
    """One chip config and one workload."""

    key: str                     # sha256 hex of the canonical point
    params: dict                 # varied path -> value
    workload: dict               # Workload.label(), plus the dtypes `datatypes` set
    config: dict                 # full resolved config dict (raw overrides if invalid)
    model: dict                  # resolved ModelSpec fields
    error: str | None = None     # why the combination is invalid, or None


@dataclass
class SweepSpec:
    """A parsed, checked sweep file."""

    source: str
    name: str
    base: str                       # as written
    base_config: dict               # full resolved base config
    workloads: tuple[Workload, ...]
    parameters: tuple[Parameter, ...]
    mode: str = "grid"
    seed: int | None = None
    samples: int | None = None
    evaluator: str = DEFAULT_EVALUATOR
    _models: dict = field(default_factory=dict, repr=False)

    # ---- combinations -------------------------------------------------------------------
    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.parameters)

    def assignments(self) -> list[dict]:
        """path -> value for each chip: the whole grid, or the seeded random sample of it
        (the last parameter varies fastest)."""
        sizes = [len(p.values) for p in self.parameters]
        total = math.prod(sizes)
        if self.mode == "grid":
            indices: Iterable[int] = range(total)
        else:
            indices = sorted(random.Random(self.seed).sample(range(total), self.samples))
        out = []
        for i in indices:
            a, rest = {}, i
            for p, n in zip(reversed(self.parameters), reversed(sizes)):
                rest, j = divmod(rest, n)
                a[p.path] = p.values[j]
            out.append({p.path: a[p.path] for p in self.parameters})
        return out

    def points(self) -> list[Point]:
        """Every point, in order, duplicates (the same resolved config and workload) removed."""
        out, seen = [], set()
        for a in self.assignments():
            cfg, err = _apply(self.base_config, a)
            for w in self.workloads:
                p = self._point(a, cfg, err, w)
                if p.key not in seen:
                    seen.add(p.key)
                    out.append(p)
        return out

    def _point(self, params: dict, cfg: dict, err: str | None, w: Workload) -> Point:
        label = w.label()
        dtype = params.get("datatypes")
        if dtype is not None:
            label["weight_dtype"] = label["act_dtype"] = dtype
        model = self._model(w, label)
        run = {"phase": w.phase, "batch": w.batch, "context": w.context,
               "all_layers": w.all_layers, "ignore_capacity": w.ignore_capacity}
        ident = {"config": cfg, "workload": {**run, "model": model}, "tilesim": __version__}
        if self.evaluator != DEFAULT_EVALUATOR:
            ident["evaluator"] = self.evaluator
        if err is not None:
            # an invalid point has no resolved config; its raw dict may even equal a valid
            # point's (a shorthand that could not apply), so its overrides are part of it
            ident["invalid"] = {"params": params, "error": err}
        return Point(point_key(ident), dict(params), label, cfg, model, err)

    def _model(self, w: Workload, label: dict) -> dict:
        from tilesim.programs.models import resolve_model

        dts = (label.get("weight_dtype") or "bf16", label.get("act_dtype") or "bf16",
               label.get("kv_dtype") or "bf16")
        k = (w.model, dts)
        if k not in self._models:
            spec = resolve_model(w.model, *dts)
            self._models[k] = dataclasses.asdict(spec)
        return self._models[k]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, no NaN: the same data gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=str)


def point_key(ident: Mapping) -> str:
    """sha256 hex of the canonical JSON of a point's identity."""
    return hashlib.sha256(canonical_json(ident).encode("utf-8")).hexdigest()


def load_sweep(path: str | Path, *, evaluator: str | None = None) -> SweepSpec:
    """Read and check a sweep file; ConfigError (one line) names file, key, value, allowed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    return parse_sweep(_config.read_yaml(text, str(path)), str(path), base_dir=path.parent,
                       evaluator=evaluator)


def parse_sweep(data: Any, source: str = "<sweep>", *, base_dir: str | Path = ".",
                evaluator: str | None = None) -> SweepSpec:
    """Check parsed sweep data and build a SweepSpec (see load_sweep)."""
    ctx = _config._Ctx(source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(f"{source}: the top level must be a mapping of keys "
                          f"({', '.join(SWEEP_KEYS)}), not {kind}")
    _config._unknown_keys(ctx, "", data, SWEEP_KEYS)
    for key in ("base", "workloads", "parameters"):
        if key not in data:
            ctx.fail(key, None, {"base": "a chip preset name or YAML path",
                                 "workloads": "a mapping of model, phase, batch, context",
                                 "parameters": "a mapping of config key paths to values"}[key],
                     missing=True)
    if "version" in data:
        _config._scalar(ctx, "version", int, data["version"], {"choices": (SWEEP_VERSION,)})
    base_dir = Path(base_dir)

    # base chip
    base = data["base"]
    if not isinstance(base, str) or not base.strip():
        ctx.fail("base", base, "a chip preset name or the path of a chip YAML file")
    try:
        base_cfg = _config.load(_near(base, base_dir))
    except ConfigError as e:
        raise ConfigError(f"{source}: base: {e}") from None
    base_dict = _config.to_dict(base_cfg, full=True)
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        ctx.fail("name", name, "a non-empty string")

    # mode, seed, samples
    mode = data.get("mode", "grid")
    mode = _config._scalar(ctx, "mode", str, mode, {"choices": MODES})
    seed = samples = None
    if mode == "random":
        for key in ("seed", "samples"):
            if key not in data:
                ctx.fail(key, None, "an integer, required with mode: random", missing=True)
        seed = _config._scalar(ctx, "seed", int, data["seed"], {"min": 0})
        samples = _config._scalar(ctx, "samples", int, data["samples"], {"min": 1})
    else:
        for key in ("seed", "samples"):
            if key in data:
                ctx.fail(key, data[key], "only with mode: random")

    ev = evaluator or data.get("evaluator", DEFAULT_EVALUATOR)
    if evaluator is None and "evaluator" in data:
        _config._scalar(ctx, "evaluator", str, ev, {})
    try:
        load_evaluator(ev)
    except InputError as e:
        raise ConfigError(f"{source}: evaluator: {e}") from None

    parameters = _parameters(ctx, data["parameters"])
    workloads = _workloads(ctx, data["workloads"], base_dir,
                           datatypes=any(p.path == "datatypes" for p in parameters))
    spec = SweepSpec(source=source, name=name, base=base, base_config=base_dict,
                     workloads=workloads, parameters=parameters, mode=mode, seed=seed,
                     samples=samples, evaluator=ev)
    size = spec.grid_size()
    if mode == "random" and samples > size:
        ctx.fail("samples", samples, f"at most {size}, the combinations of the parameter values")
    if mode == "grid" and size * len(workloads) > MAX_POINTS:
        ctx.fail("parameters", f"{size} combinations x {len(workloads)} workloads",
                 f"at most {MAX_POINTS} points in a grid; use mode: random with samples")
    return spec


def _near(name: str, base_dir: Path) -> str:
    """A path relative to the sweep file's folder when it exists there, else as given."""
    p = Path(name)
    if not p.is_absolute() and (base_dir / p).exists():
        return str(base_dir / p)
    return name


# ---- parameters ------------------------------------------------------------------------------


def _parameters(ctx, data) -> tuple[Parameter, ...]:
    if not isinstance(data, Mapping) or not data:
        ctx.fail("parameters", data, "a non-empty mapping from config key paths (such as "
                 "cores.systolic.rows) to a list of values or a range {start, stop, step}")
    out = []
    for path, values in data.items():
        if not isinstance(path, str):
            ctx.fail("parameters", path, "config key paths written as strings")
        where = f"parameters.{path}"
        check = _param_checker(ctx, path)
        if isinstance(values, Mapping) and set(values) & {"start", "stop", "step", "factor"}:
            raw = _range(ctx, where, values, check)
            vals = [check(where, v) for v in raw]
        else:
            if not isinstance(values, list):
                ctx.fail(where, values, "a list of values, or a range {start, stop, step} or "
                         "{start, stop, factor}")
            if not values:
                ctx.fail(where, values, "a non-empty list: at least one value")
            vals = [check(f"{where}[{i}]", v) for i, v in enumerate(values)]
        seen = []
        for i, v in enumerate(vals):
            if any(canonical_json(v) == canonical_json(s) for s in seen):
                ctx.fail(f"{where}[{i}]", v, "each value once")
            seen.append(v)
        out.append(Parameter(path, tuple(vals)))
    return tuple(out)


def _param_checker(ctx, path: str) -> Callable[[str, Any], Any]:
    """Resolve a dotted parameter path against the config schema; return ``check(where,
    value)`` that checks one value with the config loader's own rules and returns it as
    stored (sizes in bytes, blocks as written)."""
    import types

    from tilesim.dtypes import ARRAY_INPUT_DTYPES

    if path == "datatypes":
        return lambda where, v: _config._scalar(ctx, where, str, v,
                                                {"choices": ARRAY_INPUT_DTYPES})
    if path == "memory.channels":
        return lambda where, v: _config._scalar(ctx, where, int, v, {"min": 1, "max": 65536})
    parts = path.split(".")
    cls = _config.ChipConfig
    for i, seg in enumerate(parts):
        here = ".".join(parts[:i])
        fields = {f.name: f for f in _config._yaml_fields(cls)}
        if seg not in fields:
            allowed = list(fields) + [k.rpartition(".")[2] for k in VIRTUAL
                                      if k.rpartition(".")[0] == here]
            _config._unknown_keys(ctx, "parameters" + (f".{here}" if here else ""),
                                  {seg: None}, allowed)
        f = fields[seg]
        hint = typing.get_type_hints(cls)[seg]
        tp = hint
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if i == len(parts) - 1:
            return _leaf_checker(ctx, cls, f, hint)
        if typing.get_origin(tp) is collections.abc.Mapping:
            # an entry of a mapping field (vector ops, energy or timing overrides), checked
            # by the loader as a one-entry mapping
            if i != len(parts) - 2:
                raise ConfigError(f"{_where(ctx, path)}: not a config key path (it may end "
                                  f"at one entry of {'.'.join(parts[:i + 1])})")
            prefix, entry, owner = f"parameters.{'.'.join(parts[:-1])}", parts[-1], cls

            def check_entry(where, v, f=f, owner=owner, hint=hint):
                _config._value(ctx, prefix, hint, {entry: v}, f.metadata, owner, f.name)
                return _plain(v)
            return check_entry
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{_where(ctx, path)}: not a config key path "
                              f"({'.'.join(parts[:i + 1])} holds a value, not keys)")
        cls = tp
    raise AssertionError("unreachable")


def _where(ctx, path: str) -> str:
    from tilesim.errors import location
    return location(ctx.source, f"parameters.{path}")


def _leaf_checker(ctx, owner, f, tp):
    def check(where, v):
        got = _config._value(ctx, where, tp, v, f.metadata, owner, f.name)
        if got is None or isinstance(got, (bool, int, float, str)):
            return got if got is not None else "none"
        return _plain(v)        # a block, a list: stored as written, validated per point
    check.size = bool(f.metadata.get("size"))      # a range step may be a size too
    return check


def _plain(v):
    """JSON-like data (tuples as lists) so that values hash and compare canonically."""
    return json.loads(canonical_json(v))


def _range(ctx, where: str, spec: Mapping, check) -> list:
    _config._unknown_keys(ctx, where, spec, ("start", "stop", "step", "factor"))
    for k in ("start", "stop"):
        if k not in spec:
            ctx.fail(f"{where}.{k}", None, "the first and last value of the range", missing=True)
    if ("step" in spec) == ("factor" in spec):
        ctx.fail(where, dict(spec), "exactly one of step (arithmetic) or factor (geometric)")
    start, stop = check(f"{where}.start", spec["start"]), check(f"{where}.stop", spec["stop"])
    for k, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            ctx.fail(f"{where}.{k}", spec[k], "a number: ranges are for numeric keys")
    if start > stop:
        ctx.fail(where, dict(spec), f"a non-empty range: start {start} is above stop {stop}")
    is_int = isinstance(start, int) and isinstance(stop, int)
    if "step" in spec:
        step = _config._scalar(ctx, f"{where}.step", int if is_int else float, spec["step"],
                               {"min": 1 if is_int else 1e-300,
                                "size": getattr(check, "size", False)})
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_RANGE_VALUES:
            ctx.fail(where, dict(spec), f"at most {MAX_RANGE_VALUES} values")
        vals = [start + i * step for i in range(n)]
    else:
        factor = _config._scalar(ctx, f"{where}.factor", float, spec["factor"],
                                 {"min": 1.000001, "max": 1e6})
        vals, v = [], start
        if v <= 0:
            ctx.fail(f"{where}.start", start, "a positive number for a geometric range")
        while v <= stop * (1 + 1e-12):
            vals.append(v)
            if len(vals) > MAX_RANGE_VALUES:
                ctx.fail(where, dict(spec), f"at most {MAX_RANGE_VALUES} values")
            v = v * factor
    if is_int:
        out = []
        for v in vals:
            r = round(v)
            if abs(r - v) > 1e-9 * max(1, abs(v)):
                ctx.fail(where, dict(spec), f"whole numbers at every step for this integer "
                         f"key ({v:g} is not)")
            out.append(int(r))
        return out
    return [round(v, 12) for v in vals]


# ---- workloads ---------------------------------------------------------------------------


def _workloads(ctx, data, base_dir: Path, *, datatypes: bool) -> tuple[Workload, ...]:
    from tilesim.dtypes import ARRAY_INPUT_DTYPES
    from tilesim.programs import models
    from tilesim.programs.graph import ROUTINGS

    blocks = data if isinstance(data, list) else [data]
    if not blocks:
        ctx.fail("workloads", data, "at least one workload")
    rules = {"model": (str, {}), "phase": (str, {"choices": models.PHASES}),
             "batch": (int, {"min": 1, "max": 1 << 20}),
             "context": (int, {"min": 0, "max": 1 << 24}),
             "weight_dtype": (str, {"choices": ARRAY_INPUT_DTYPES}),
             "act_dtype": (str, {"choices": ARRAY_INPUT_DTYPES}),
             "kv_dtype": (str, {"choices": ARRAY_INPUT_DTYPES}),
             "routing": (str, {"choices": ROUTINGS}),
             "all_layers": (bool, {}), "ignore_capacity": (bool, {})}
    out, seen = [], set()
    for bi, block in enumerate(blocks):
        where = f"workloads[{bi}]" if isinstance(data, list) else "workloads"
        if not isinstance(block, Mapping):
            ctx.fail(where, block, "a mapping with keys model, phase, batch, context")
        _config._unknown_keys(ctx, where, block, WORKLOAD_KEYS)
        for k in ("model", "phase", "batch", "context"):
            if k not in block:
                ctx.fail(f"{where}.{k}", None, "a value or a list of values", missing=True)
        if datatypes:
            for k in ("weight_dtype", "act_dtype"):
                if k in block:
                    ctx.fail(f"{where}.{k}", block[k], "not given: the parameter 'datatypes' "
                             "sets it")
        lists = {}
        for k, v in block.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                ctx.fail(f"{where}.{k}", v, "a value or a non-empty list of values")
            tp, meta = rules[k]
            lists[k] = [_config._scalar(ctx, f"{where}.{k}" + (f"[{i}]" if isinstance(v, list)
                                                                else ""), tp, x, meta)
                        for i, x in enumerate(vals)]
        keys = list(lists)
        for combo in itertools.product(*(lists[k] for k in keys)):
            kw = dict(zip(keys, combo))
            kw["model"] = _near(kw["model"], base_dir)
            w = Workload(**kw)
            try:
                spec = models.resolve_model(w.model, w.weight_dtype or "bf16",
                                            w.act_dtype or "bf16", w.kv_dtype or "bf16")
            except TilesimError as e:
                raise ConfigError(f"{ctx.source}: {where}.model: {e}") from None
            try:
                models.check_context(spec, w.context, w.phase)
            except TilesimError as e:
                raise ConfigError(f"{ctx.source}: {where}.context: {e}") from None
            if w not in seen:
                seen.add(w)
                out.append(w)
    return tuple(out)


# ---- applying a point's overrides ------------------------------------------------------------


def _apply(base: dict, params: Mapping) -> tuple[dict, str | None]:
    """The base config dict with ``params`` applied, then validated: (full resolved dict,
    None), or (the raw merged dict, the config's one-line error) for an invalid combination."""
    d = json.loads(json.dumps(base))              # deep copy of plain data
    for path, value in params.items():
        if path not in VIRTUAL:
            _set(d, path.split("."), value)
    if "datatypes" in params:
        from tilesim.dtypes import DTYPES

        t = params["datatypes"]
        s = d.setdefault("cores", {}).setdefault("systolic", {})
        s["input_dtype"] = s["weight_dtype"] = t
        s["acc_dtype"] = "int32" if DTYPES[t].is_int else "fp32"
    if "memory.channels" in params:
        from tilesim.arch.dram.standards import ALL

        n = params["memory.channels"]
        mem = d.get("memory")
        std = ALL.get(mem.get("standard")) if isinstance(mem, dict) else None
        if std is None:
            return d, "memory.channels: needs a memory standard (memory is 'none' or unknown)"
        if n % std.channels_per_device:
            return d, (f"memory.channels: {n} is not allowed (a multiple of "
                       f"{std.channels_per_device}, the channels of one {std.name} device)")
        mem["devices"] = n // std.channels_per_device
    try:
        cfg = _config.from_dict(d, "")
    except ConfigError as e:
        return d, str(e)
    return _config.to_dict(cfg, full=True), None


def _set(d: dict, parts: list[str], value) -> None:
    for k in parts[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            d[k] = nxt
        d = nxt
    d[parts[-1]] = value


# --------------------------------------------------------------------------------------------
# Evaluating one point (runs on a worker)
# --------------------------------------------------------------------------------------------


def load_evaluator(address: str) -> Callable:
    """Import ``module:function``; InputError (one line) if it cannot be."""
    if not isinstance(address, str) or address.count(":") != 1:
        raise InputError(f"{address!r} is not allowed (module:function, e.g. "
                         f"{DEFAULT_EVALUATOR!r})")
    mod, fn = address.split(":")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(f"{address!r} cannot be imported ({e.__class__.__name__}: {e})") from None
    if not callable(obj):
        raise InputError(f"{address!r} is not a function")
    return obj


def jsonable(obj: Any) -> Any:
    """Plain JSON data from a result summary (numpy scalars and arrays included)."""
    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, (set, frozenset, tuple)):
            return list(o)
        return str(o)
    text = json.dumps(obj, default=default, allow_nan=True)
    return json.loads(text)


def evaluate_point(evaluator: str, config_dict: dict, model: dict, workload: dict) -> dict:
    """Run one point and return ``{status, result | error, traceback, elapsed_s}``.

    Never raises for a failing point (an exception becomes a *failed* record); only
    KeyboardInterrupt and SystemExit pass through."""
    from tilesim.programs.models import ModelSpec

    t0 = time.perf_counter()
    try:
        fn = load_evaluator(evaluator)
        chip = _config.from_dict(config_dict, "")
        spec = ModelSpec(**model)
        # progress=False: tilesim.simulate draws its own bar on a terminal's stderr, which
        # here (or in a worker sharing the terminal) would write over the sweep's bar
        extra = {"routing": workload["routing"]} if "routing" in workload else {}
        res = fn(chip, spec, workload["phase"], workload["batch"], workload["context"],
                 all_layers=workload.get("all_layers", False),
                 ignore_capacity=workload.get("ignore_capacity", False), progress=False,
                 **extra)
        summary = res.summary() if hasattr(res, "summary") else res
        if not isinstance(summary, Mapping):
            raise TypeError(f"evaluator {evaluator} returned {type(summary).__name__}, "
                            f"not a mapping or an object with summary()")
        return {"status": "ok", "result": jsonable(dict(summary)), "error": None,
                "traceback": None, "elapsed_s": time.perf_counter() - t0}
    except Exception as e:              # noqa: BLE001 - a failing point is data, not a crash
        msg = str(e) if isinstance(e, TilesimError) else f"{e.__class__.__name__}: {e}"
        return {"status": "failed", "result": None, "error": " ".join(msg.split()),
                "traceback": traceback.format_exc(), "elapsed_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# The store: SQLite, one row per point, WAL, a commit per result
# --------------------------------------------------------------------------------------------

SCHEMA_ID = "tilesim-sweep-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'invalid')),
    sweep TEXT,
    params TEXT NOT NULL,
    workload TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT,
    error TEXT,
    traceback TEXT,
    elapsed_s REAL,
    tilesim_version TEXT NOT NULL,
    evaluator TEXT NOT NULL,
    finished_at REAL NOT NULL
);
"""


class Store:
    """The sweep database. Writes go through this object in one process."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = str(path)
        if not create and not Path(self.path).is_file():
            raise InputError(f"{self.path}: no such sweep database")
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if create:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_ID,))
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not a tilesim sweep database ({e})") from None
        if not row or row[0] != SCHEMA_ID:
            raise InputError(f"{self.path}: not a tilesim sweep database (schema "
                             f"{row[0] if row else 'missing'}, expected {SCHEMA_ID})")

    def finished(self, keys: Iterable[str] | None = None, *, retry_failed: bool = False) -> set:
        """Keys already recorded (failed ones too unless ``retry_failed``)."""
        statuses = ("ok", "invalid") if retry_failed else STATUSES
        q = f"SELECT key FROM points WHERE status IN ({','.join('?' * len(statuses))})"
        done = {r[0] for r in self.db.execute(q, statuses)}
        return done if keys is None else done & set(keys)

    def record(self, point: Point, status: str, *, sweep: str = "", result=None, error=None,
               tb=None, elapsed_s=None, evaluator: str = DEFAULT_EVALUATOR) -> None:
        """Write one point in its own transaction; an ok row is never overwritten."""
        self.db.execute(
            "INSERT INTO points (key, status, sweep, params, workload, config, result, error, "
            "traceback, elapsed_s, tilesim_version, evaluator, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET status=excluded.status, result=excluded.result, "
            "error=excluded.error, traceback=excluded.traceback, elapsed_s=excluded.elapsed_s, "
            "finished_at=excluded.finished_at WHERE points.status != 'ok'",
            (point.key, status, sweep, json.dumps(point.params),      # in the file's order
             canonical_json(point.workload), canonical_json(point.config),
             None if result is None else json.dumps(result, allow_nan=True), error, tb,
             elapsed_s, __version__, evaluator, time.time()))

    def rows(self) -> list[dict]:
        """Every recorded point as a dict (JSON columns decoded)."""
        cur = self.db.execute("SELECT key, status, sweep, params, workload, config, result, "
                              "error, elapsed_s, tilesim_version, evaluator FROM points")
        out = []
        for r in cur:
            d = dict(zip(("key", "status", "sweep", "params", "workload", "config", "result",
                          "error", "elapsed_s", "tilesim_version", "evaluator"), r))
            for k in ("params", "workload", "config", "result"):
                d[k] = json.loads(d[k]) if d[k] is not None else None
            out.append(d)
        return out

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------------


@dataclass
class SweepStats:
    points: int = 0          # distinct points of the sweep
    already: int = 0         # found finished in the database and skipped
    invalid: int = 0         # invalid combinations recorded this run
    ran: int = 0             # points evaluated and recorded this run
    ok: int = 0
    failed: int = 0
    lost: int = 0            # lost with a worker: not recorded, they run again next time
    lost_errors: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_workers() -> int:
    """Worker processes of the default local cluster: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:              # not on Linux
        return max(1, os.cpu_count() or 1)


def run_sweep(spec: SweepSpec, db: str | Path, *, scheduler: str | None = None,
              workers: int | None = None, processes: bool = True, client=None,
              retry_failed: bool = False, progress: bool = False,
              on_result: Callable[[Point, dict], None] | None = None) -> SweepStats:
    """Run every point of ``spec`` not yet in ``db``; return counts.

    ``client``: an existing dask.distributed Client to use (left open). Else ``scheduler``:
    the address of a running Dask scheduler. Else a LocalCluster of ``workers`` processes
    (default: one per core; ``processes=False`` for threads); ``workers=0`` runs the points in
    this process without Dask. ``on_result(point, record)`` is called after each record is
    committed. A KeyboardInterrupt stops the sweep after cleaning up; every point recorded
    before it stays recorded.

    Worker processes start by importing the main module afresh, so a script that calls this
    with a local cluster of processes needs the usual ``if __name__ == "__main__":`` guard
    (notebooks and ``tilesim sweep`` do not)."""
    from tilesim.report.progress import ProgressBar

    points = spec.points()
    stats = SweepStats(points=len(points))
    if points and all(p.error for p in points):
        raise ConfigError(f"{spec.source}: parameters: every point is an invalid config; the "
                          f"first: {points[0].error}")
    if workers is not None and workers < 0:
        raise InputError(f"workers: {workers} is not allowed (0 for no Dask, or >= 1)")
    with Store(db) as store:
        done = store.finished((p.key for p in points), retry_failed=retry_failed)
        stats.already = len(done)
        todo = [p for p in points if p.key not in done]
        for p in todo:
            if p.error:
                store.record(p, "invalid", sweep=spec.name, error=p.error,
                             evaluator=spec.evaluator)
                stats.invalid += 1
        todo = [p for p in todo if not p.error]
        bar = ProgressBar(len(todo), spec.name, enabled=None if progress else False)

        def record(p: Point, out: dict) -> None:
            store.record(p, out["status"], sweep=spec.name, result=out["result"],
                         error=out["error"], tb=out["traceback"], elapsed_s=out["elapsed_s"],
                         evaluator=spec.evaluator)
            stats.ran += 1
            stats.ok += out["status"] == "ok"
            stats.failed += out["status"] == "failed"
            bar.update(ok=stats.ok, failed=stats.failed)
            if on_result is not None:
                on_result(p, out)

        try:
            if not todo:
                return stats
            if workers == 0 and client is None and scheduler is None:
                for p in todo:
                    record(p, evaluate_point(spec.evaluator, p.config, p.model, _run_args(p)))
            else:
                _run_dask(spec, todo, record, stats, client=client, scheduler=scheduler,
                          workers=workers, processes=processes)
        finally:
            bar.close()
    return stats


def _run_args(p: Point) -> dict:
    w = p.workload
    return {"phase": w["phase"], "batch": w["batch"], "context": w["context"],
            "all_layers": w.get("all_layers", False),
            "ignore_capacity": w.get("ignore_capacity", False)}


def _dask():
    try:
        import distributed
    except ImportError:
        raise InputError("Dask is not installed: pip install 'tilesim[sweep]' (or run the "
                         "points in this process with --workers 0)") from None
    return distributed


def _run_dask(spec, todo, record, stats, *, client, scheduler, workers, processes) -> None:
    distributed = _dask()
    own_client = own_cluster = None
    try:
        if client is None:
            if scheduler is not None:
                try:
                    client = own_client = distributed.Client(scheduler, timeout="20s")
                except (OSError, TimeoutError, ValueError) as e:
                    raise InputError(f"--scheduler: cannot connect to {scheduler!r} "
                                     f"({e.__class__.__name__}: {e})") from None
            else:
                import logging

                import dask
                n = min(workers or default_workers(), len(todo))
                # worker-saturation 1.0: a worker holds only the point it runs, so when it
                # dies Dask blames that point alone (not one queued behind it)
                with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                    own_cluster = distributed.LocalCluster(
                        n_workers=n, threads_per_worker=1, processes=processes,
                        dashboard_address=None, silence_logs=logging.CRITICAL)
                client = own_client = distributed.Client(own_cluster)
        futures = {}
        for p in todo:
            fut = client.submit(evaluate_point, spec.evaluator, p.config, p.model,
                                _run_args(p), pure=False)
            futures[fut] = p
        try:
            for fut in distributed.as_completed(list(futures)):
                p = futures.pop(fut)
                try:
                    out = fut.result()
                except KeyboardInterrupt:
                    raise
                except distributed.KilledWorker as e:
                    # the point took down every worker it was given (Dask retries it on
                    # others first): a crash of the point itself, so record it as failed
                    out = {"status": "failed", "result": None, "traceback": None,
                           "elapsed_s": None, "error": " ".join(
                               f"the point killed its worker each time it ran (a crash or "
                               f"running out of memory): {e}".split())}
                except BaseException as e:      # noqa: BLE001 - lost with the cluster
                    stats.lost += 1
                    stats.lost_errors.append(f"{p.key[:12]}: {e.__class__.__name__}: {e}")
                    continue
                record(p, out)
        finally:
            if futures:
                client.cancel(list(futures), force=True)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


# --------------------------------------------------------------------------------------------
# The report: table, Pareto fronts, plot
# --------------------------------------------------------------------------------------------

OBJECTIVES = {
    "energy": ("energy_pj_per_token", "energy per token (pJ)"),
    "cost": ("memory_cost_usd", "memory cost ($)"),
    "area": ("area_proxy", "area proxy (MAC units + SRAM bytes)"),
}
"""Pareto fronts: tokens/s (maximised) against each of these (minimised)."""


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points not dominated when maximising x and minimising y: no other
    point has x at least as large and y at least as small with one of them strictly better.
    Equal points are all on the front. Sorted by x descending, in O(n log n)."""
    order = sorted(range(len(xs)), key=lambda i: (-xs[i], ys[i]))
    front, best_y = [], math.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and xs[order[j]] == xs[order[i]]:
            j += 1
        group = order[i:j]
        m = ys[group[0]]
        if m < best_y:
            front.extend(k for k in group if ys[k] == m)
        best_y = min(best_y, m)
        i = j
    return front


def workload_label(w: Mapping) -> str:
    s = f"{w['model']} {w['phase']} b{w['batch']} s{w['context']}"
    for k in ("weight_dtype", "act_dtype", "kv_dtype"):
        if k in w:
            s += f" {k.split('_')[0]}={w[k]}"
    for k in ("all_layers", "ignore_capacity"):
        if w.get(k):
            s += f" {k}"
    return s


def report(db: str | Path) -> dict:
    """The database as a table (``rows``, one per point, sorted) and Pareto fronts per workload
    (``fronts[workload][objective]`` = point keys on the front, best tokens/s first)."""
    from tilesim import costs

    with Store(db, create=False) as store:
        raw = store.rows()
    params: list[str] = []
    for r in raw:
        for k in r["params"]:
            if k not in params:
                params.append(k)
    rows = []
    for r in raw:
        res = r["result"] or {}
        row = {"key": r["key"], "status": r["status"], "sweep": r["sweep"],
               "workload": workload_label(r["workload"]), "params": r["params"],
               "tokens_per_s": _num(res.get("tokens_per_s")),
               "energy_pj_per_token": _num(res.get("energy_pj_per_token")),
               "seconds": _num(res.get("seconds")),
               "memory_cost_usd": None, "area_proxy": None, "error": r["error"],
               "result": res or None}
        if r["status"] != "invalid":
            try:
                cfg = _config.from_dict(r["config"], "")
                row["memory_cost_usd"] = costs.memory_cost_usd(cfg)
                row["area_proxy"] = costs.area_proxy(cfg)
            except (ConfigError, KeyError):
                pass
        rows.append(row)
    rows.sort(key=lambda r: (r["workload"], [_order(r["params"].get(p)) for p in params],
                             r["key"]))
    fronts: dict[str, dict[str, list[str]]] = {}
    for wl in sorted({r["workload"] for r in rows}):
        group = [r for r in rows if r["workload"] == wl and r["status"] == "ok"]
        fronts[wl] = {}
        for name, (col, _) in OBJECTIVES.items():
            ok = [r for r in group if r["tokens_per_s"] is not None and r[col] is not None]
            idx = pareto_front([r["tokens_per_s"] for r in ok], [r[col] for r in ok])
            fronts[wl][name] = [ok[i]["key"] for i in idx]
    for r in rows:
        r["front"] = [n for n in OBJECTIVES if r["key"] in fronts.get(r["workload"], {})[n]]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    return {"db": str(db), "parameters": params, "counts": counts, "rows": rows,
            "fronts": fronts}


def _order(v) -> tuple:
    """Sort key of a parameter value: numbers by value, then strings, then the rest."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    if isinstance(v, str):
        return (1, 0, v)
    return (2 if v is not None else 3, 0, canonical_json(v))


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def plot_fronts(rep: dict, out_dir: str | Path) -> list[str]:
    """One PNG per workload: tokens/s against each objective, every ok point in grey and the
    Pareto front in colour. Written atomically; returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for wl, fronts in rep["fronts"].items():
        rows = [r for r in rep["rows"] if r["workload"] == wl and r["status"] == "ok"
                and r["tokens_per_s"] is not None]
        if not rows:
            continue
        fig, axes = plt.subplots(1, len(OBJECTIVES), figsize=(4.2 * len(OBJECTIVES), 3.6))
        for ax, (name, (col, label)) in zip(axes, OBJECTIVES.items()):
            pts = [r for r in rows if r[col] is not None]
            ax.scatter([r[col] for r in pts], [r["tokens_per_s"] for r in pts], s=14,
                       color="0.7", label="points")
            by_key = {r["key"]: r for r in pts}
            front = sorted((by_key[k] for k in fronts[name] if k in by_key),
                           key=lambda r: r[col])
            if front:
                ax.plot([r[col] for r in front], [r["tokens_per_s"] for r in front], "o-",
                        color="C3", ms=5, drawstyle="steps-post", label="Pareto front")
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("tokens/s", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{wl}: {len(rows)} points", fontsize=9)
        fig.tight_layout()
        slug = "".join(c if c.isalnum() or c in "-." else "_" for c in wl)
        path = out_dir / f"pareto_{slug}.png"
        save_figure(fig, path)
        plt.close(fig)
        paths.append(str(path))
    return paths


def save_figure(fig, path: str | Path) -> None:
    """fig.savefig to a temporary file in the same folder, renamed into place."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file through a temporary file renamed into place."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
