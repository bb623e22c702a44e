"""Chip configuration: YAML -> validated, frozen, typed dataclasses.

Loading has two steps (ZigZag's split): *validate and build* walks the dataclass fields below and
builds each one from the YAML mapping, checking type, range and allowed values; *cross-check*
then tests the rules that span fields (placement against the NoC, accumulator against input
type, ...). Every rejection is a :class:`~tilesim.errors.ConfigError` whose one-line message
names the file, the key path, the value and what is allowed, e.g.::

    configs/x.yaml: cores.sram.banks: 0 is not allowed (integer >= 1)

Rules: unknown keys are errors (with a did-you-mean), duplicate keys are errors (PyYAML would
keep the last one silently), units live in key names (``size_bytes``, ``clock_ghz``), and sizes
may be written as strings such as ``"32 MiB"`` or ``"1.5 GB"``. Each field documents itself in
its metadata; ``tilesim check --schema`` prints those docs.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from tilesim.arch import energy as _energy
from tilesim.dtypes import ACCUMULATOR_DTYPES, ARRAY_INPUT_DTYPES, DTYPES, accumulator_ok
from tilesim.errors import ConfigError, location

CONFIG_VERSION = 1

# --------------------------------------------------------------------------------------------
# Field metadata helpers
# --------------------------------------------------------------------------------------------


def doc(text: str, *, min=None, max=None, choices=None, size=False, min_len=None) -> dict:
    """Field metadata: a description plus the rules the loader enforces."""
    return {"doc": text, "min": min, "max": max, "choices": choices, "size": size, "min_len": min_len}


def _f(text: str, default=dataclasses.MISSING, **rules):
    """A dataclass field with documentation and validation rules in its metadata."""
    if default is not dataclasses.MISSING and getattr(default, "__hash__", None) is None:
        value = MappingProxyType(dict(default)) if isinstance(default, Mapping) else default
        return field(default_factory=lambda: value, metadata=doc(text, **rules))
    return field(default=default, metadata=doc(text, **rules))


VECTOR_OPS = ("add", "sub", "mul", "max", "recip", "exp", "rsqrt", "silu", "gelu",
              "reduce_sum", "reduce_max", "rope", "convert", "copy")
"""Vector-engine operations (the ISA's vector sub-opcodes use the same names)."""

MEMORY_STANDARDS = ("ddr3", "hbm2", "hbm2e", "hbm3", "gddr6")
"""Off-chip memory standards tilesim models (tilesim/arch/dram/standards.py)."""

DRAM_TIMING_KEYS = ("nCL", "nCWL", "nBL", "nRCD", "nRCDW", "nRP", "nRAS", "nRC", "nRTP", "nWR",
                    "nWTR_S", "nWTR_L", "nRRD_S", "nRRD_L", "nFAW", "nCCD_S", "nCCD_L",
                    "nRTW", "nREFI", "nRFC")
"""Timing parameters a config may override, in DRAM command-clock cycles (Ramulator naming)."""

TOPOLOGIES = ("mesh", "torus", "ring", "crossbar", "edges")


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SystolicConfig:
    """One weight-stationary (or os/is) systolic array per core."""

    rows: int = _f("PE rows: the K extent of a weight tile", min=1, max=4096)
    cols: int = _f("PE columns: the N extent of a weight tile", min=1, max=4096)
    dataflow: str = _f("ws (weight-stationary) | os (output-stationary) | is (input-stationary)",
                       "ws", choices=("ws", "os", "is"))
    input_dtype: str = _f("activation datatype", "int8", choices=ARRAY_INPUT_DTYPES)
    weight_dtype: str = _f("weight datatype", "int8", choices=ARRAY_INPUT_DTYPES)
    acc_dtype: str = _f("accumulator datatype", "int32", choices=ACCUMULATOR_DTYPES)
    weight_double_buffer: bool = _f(
        "two weight registers per PE: the next tile loads while the current one streams", False)


@dataclass(frozen=True)
class VectorOpConfig:
    """Throughput and latency of one vector operation."""

    elems_per_lane_per_cycle: float = _f("elements each lane finishes per cycle", min=1e-6, max=64)
    latency_cycles: int = _f("pipeline latency added once per instruction", min=0, max=10_000)


# Default vector timings. No public per-op figure exists for a generic accelerator vector unit;
# these are assumptions in the usual shape: simple ALU ops at one element per lane per cycle,
# transcendentals through a 4-cycle LUT-plus-polynomial path, GELU twice that (tanh form),
# reductions at full rate with a log2(lanes)-deep tree folded into the latency.
DEFAULT_VECTOR_OPS = MappingProxyType({
    "add": VectorOpConfig(1.0, 2), "sub": VectorOpConfig(1.0, 2), "mul": VectorOpConfig(1.0, 3),
    "max": VectorOpConfig(1.0, 2), "recip": VectorOpConfig(0.25, 8), "exp": VectorOpConfig(0.25, 8),
    "rsqrt": VectorOpConfig(0.25, 8), "silu": VectorOpConfig(0.25, 10), "gelu": VectorOpConfig(0.125, 12),
    "reduce_sum": VectorOpConfig(1.0, 8), "reduce_max": VectorOpConfig(1.0, 8),
    "rope": VectorOpConfig(0.5, 4), "convert": VectorOpConfig(1.0, 2), "copy": VectorOpConfig(1.0, 1),
})


@dataclass(frozen=True, kw_only=True)
class VectorConfig:
    """The SIMD unit for softmax, norms, activations, RoPE and residual adds."""

    lanes: int = _f("SIMD lanes (elements per cycle at throughput 1)", 64, min=1, max=65536)
    ops: Mapping[str, VectorOpConfig] = _f(
        "per-op timing; keys from the list of vector ops, unspecified ops keep their defaults",
        DEFAULT_VECTOR_OPS, choices=VECTOR_OPS)


@dataclass(frozen=True, kw_only=True)
class SramConfig:
    """The single level of banked on-chip scratchpad per core."""

    size_bytes: int = _f("capacity per core (may be written '1.5 MiB')", min=1, size=True)
    banks: int = _f("independent banks", 16, min=1, max=65536)
    bank_width_bytes: int = _f("bytes one bank reads or writes per cycle", 64, min=1, max=4096)
    ports_per_bank: int = _f("accesses one bank serves per cycle", 1, min=1, max=4)
    latency_cycles: int = _f("access latency", 2, min=0, max=1000)


@dataclass(frozen=True, kw_only=True)
class DmaConfig:
    """Tensor DMA engines of one core (each runs its own instruction queue)."""

    engines: int = _f("DMA engines per core", 2, min=1, max=16)
    max_outstanding: int = _f("requests in flight per engine", 32, min=1, max=4096)
    max_dims: int = _f("dimensions of a strided tensor descriptor", 4, min=1, max=4)
    request_bytes: int = _f("bytes per DRAM request / NoC packet payload", 64, min=16, max=4096,
                            size=True)
    multicast_cores: int = _f("most cores one multicast LOAD may write, and so the largest "
                              "group of cores the compiler lets share a tile (1: no multicast)",
                              1, min=1, max=4096)


@dataclass(frozen=True, kw_only=True)
class CoresConfig:
    """Identical cores, each a systolic array + vector unit + SRAM + DMA engines."""

    count: int = _f("number of cores", min=1, max=4096)
    placement: Any = _f("'auto' (the first free NoC nodes in order) or a list of NoC node ids, "
                        "one per core", "auto")
    systolic: SystolicConfig = _f("the matrix engine")
    vector: VectorConfig = _f("the vector engine", VectorConfig())
    sram: SramConfig = _f("the scratchpad")
    dma: DmaConfig = _f("the DMA engines", DmaConfig())


@dataclass(frozen=True, kw_only=True)
class NocConfig:
    """Network-on-chip: a named topology or an explicit edge list."""

    topology: str = _f("mesh | torus | ring | crossbar | edges", choices=TOPOLOGIES)
    dims: tuple = _f("[x, y] routers, for mesh and torus", (), min=1, min_len=2)
    nodes: int = _f("routers, for ring, crossbar and edges", 0, min=0, max=65536)
    edges: tuple = _f("[[a, b], ...] bidirectional links, for topology 'edges'", (), min=0)
    link_width_bytes: int = _f("bytes a link carries per cycle (one flit)", 32, min=1, max=4096,
                               size=True)
    router_cycles: int = _f("router pipeline depth, cycles per hop", 4, min=1, max=1000)
    link_cycles: int = _f("wire latency per link", 1, min=1, max=1000)
    inject_cycles: int = _f("network-interface latency to enter and leave the NoC", 2, min=0,
                            max=1000)
    memory_nodes: tuple = _f("NoC node ids where memory controllers attach; channels are dealt "
                             "to them in turn", (), min=0)


@dataclass(frozen=True, kw_only=True)
class DramControllerConfig:
    """One controller per channel."""

    read_queue: int = _f("read-queue entries per channel", 64, min=1, max=4096)
    write_queue: int = _f("write-queue entries per channel", 64, min=1, max=4096)
    page_policy: str = _f("open | closed", "open", choices=("open", "closed"))
    write_high_watermark: float = _f("start draining writes at this queue fill", 0.75, min=0.0, max=1.0)
    write_low_watermark: float = _f("stop draining writes at this queue fill", 0.25, min=0.0, max=1.0)
    address_mapping: str = _f("'default' or address fields from most to least significant, "
                              "e.g. 'ro-ba-bg-ch-co'", "default")
    channel_hash: bool = _f("add the address above the channel field to the channel, modulo the "
                            "channels (like the XOR channel hashing of GPU memory controllers): "
                            "strided reads, e.g. the rows of a matrix 8 KiB apart, then reach "
                            "every channel, not channels / gcd(stride, channels)", False)
    bank_hash: bool = _f("add the XOR of the address bits above the bank fields (folded to the "
                         "bank index's width) to the bank group and bank (permutation-based "
                         "interleaving, as memory controllers hash bank bits): strided reads "
                         "then spread over every bank of a channel instead of camping on one "
                         "bank group or one bank", False)


@dataclass(frozen=True, kw_only=True)
class MemoryConfig:
    """Off-chip DRAM: a standard, how many devices, and any overrides."""

    standard: str = _f("memory standard", choices=MEMORY_STANDARDS)
    devices: int = _f("HBM stacks, GDDR6 chips, or DDR channels", 1, min=1, max=1024)
    data_rate_gbps: float = _f("per-pin data rate; 0 = the standard's default", 0.0, min=0.0, max=64.0)
    capacity_bytes: int = _f("total capacity; 0 = the standard's default per device x devices",
                             0, min=0, size=True)
    timing_overrides: Mapping[str, int] = _f("timing parameters in DRAM clock cycles", {},
                                             choices=DRAM_TIMING_KEYS, min=1)
    controller: DramControllerConfig = _f("per-channel controller", DramControllerConfig())


@dataclass(frozen=True, kw_only=True)
class EnergyConfig:
    """Which energy-per-action table to use, and rows to override."""

    table: str = _f("named table", _energy.DEFAULT_TABLE, choices=tuple(_energy.TABLES))
    overrides: Mapping[str, float] = _f("row name -> pJ per action", {}, min=0.0)


@dataclass(frozen=True, kw_only=True)
class ChipConfig:
    """A whole chip. ``source`` is the file it came from (not a YAML key)."""

    version: int = _f("config format version", choices=(CONFIG_VERSION,))
    name: str = _f("a short name for reports")
    clock_ghz: float = _f("core and NoC clock", min=0.01, max=20.0)
    cores: CoresConfig = _f("the cores")
    noc: NocConfig = _f("the network-on-chip")
    memory: MemoryConfig | None = _f("off-chip memory, or 'none' for an SRAM-only chip")
    energy: EnergyConfig = _f("energy table", EnergyConfig())
    source: str = field(default="", metadata=doc("file the config came from", choices=None),
                        compare=False)

    # ---- derived facts every consumer wants -------------------------------------------------
    @property
    def noc_nodes(self) -> int:
        """Routers in the NoC."""
        return noc_node_count(self.noc)

    @property
    def core_nodes(self) -> tuple[int, ...]:
        """NoC node of each core, in core order."""
        return resolve_placement(self.cores, self.noc)

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.cores.count * self.cores.systolic.rows * self.cores.systolic.cols

    @property
    def peak_tflops(self) -> float:
        """Dense peak, 2 FLOP per MAC, in TFLOP/s."""
        return 2 * self.peak_macs_per_cycle * self.clock_ghz / 1e3

    @property
    def sram_total_bytes(self) -> int:
        return self.cores.count * self.cores.sram.size_bytes

    def energy_table(self) -> dict[str, float]:
        """Row name -> pJ, the named table with this config's overrides applied."""
        rows = {k: r.pj for k, r in _energy.TABLES[self.energy.table].items()}
        rows.update(self.energy.overrides)
        return rows


# --------------------------------------------------------------------------------------------
# Sizes: "32 MiB" and friends
# --------------------------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: Any) -> int:
    """'32 MiB' -> 33554432; plain integers pass through. ValueError says what is allowed."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            amount = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
            if amount != int(amount):
                raise ValueError("a whole number of bytes")
            return int(amount)
    raise ValueError("an integer or a size such as '32 MiB', '1.5 GiB', '64 KB' "
                     "(units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")


def format_size(n: int) -> str:
    """33554432 -> '32 MiB' (exact binary units when they fit, else bytes)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % (scale // 1024 if scale > 1024 else 1) == 0:
            v = n / scale
            return f"{v:g} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------------------------
# YAML reading: safe_load, duplicate keys refused
# --------------------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key, line):
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if key in seen:
            raise _DuplicateKey(key, key_node.start_mark.line + 1)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely; every failure is a one-line ConfigError naming file and line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{source}: line {e.line}: key {e.key!r} appears twice in one mapping "
                          f"(each key may be given once)") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        what = (e.problem or e.context or "syntax error").strip()
        raise ConfigError(f"{source}: {where}: not valid YAML ({what})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nests too deeply") from None


# --------------------------------------------------------------------------------------------
# Validate-and-build: walk the dataclass fields
# --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    s = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, (dict, list, tuple)):
        s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, value: Any, allowed: str, *, missing: bool = False) -> typing.NoReturn:
        where = location(self.source, path)
        if missing:
            raise ConfigError(f"{where}: required key is missing ({allowed})")
        raise ConfigError(f"{where}: {_show(value)} is not allowed ({allowed})")


def _type_name(tp) -> str:
    return {int: "integer", float: "number", bool: "true or false", str: "string"}.get(tp, str(tp))


def _check_range(ctx: _Ctx, path: str, value, meta: dict, kind: str):
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        bound = (f"{kind} >= {lo}" if hi is None else f"{kind} <= {hi}" if lo is None
                 else f"{kind} from {lo} to {hi}")
        ctx.fail(path, value, bound)


def _scalar(ctx: _Ctx, path: str, tp, value, meta: dict):
    choices = meta.get("choices")
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(path, value, "true or false")
        return value
    if tp is int:
        if meta.get("size") and isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as e:
                ctx.fail(path, value, str(e))
        if isinstance(value, float) and value.is_integer() and not meta.get("size"):
            ctx.fail(path, value, "an integer, written without a decimal point")
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(path, value, "an integer" + (" or a size such as '32 MiB'" if meta.get("size") else ""))
        if choices is not None and value not in choices:
            ctx.fail(path, value, "one of " + ", ".join(map(str, choices)))
        _check_range(ctx, path, value, meta, "integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.fail(path, value, "a number")
        value = float(value)
        if not math.isfinite(value):
            ctx.fail(path, value, "a finite number")
        _check_range(ctx, path, value, meta, "number")
        return value
    if tp is str:
        if not isinstance(value, str):
            ctx.fail(path, value, "a string" + (": one of " + ", ".join(choices) if choices else ""))
        if choices is not None and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            ctx.fail(path, value, "one of " + ", ".join(choices) + extra)
        if not value.strip():
            ctx.fail(path, value, "a non-empty string")
        return value
    raise TypeError(f"config schema: unsupported field type {tp!r} at {path}")  # programming error


def _int_list(ctx: _Ctx, path: str, value, meta: dict, *, length: int | None = None) -> tuple:
    if not isinstance(value, (list, tuple)):
        ctx.fail(path, value, "a list of integers")
    if length is not None and len(value) != length:
        ctx.fail(path, value, f"a list of {length} integers")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            ctx.fail(f"{path}[{i}]", v, "an integer")
        _check_range(ctx, f"{path}[{i}]", v, meta, "integer")
        out.append(v)
    return tuple(out)


def _unknown_keys(ctx: _Ctx, path: str, data: Mapping, allowed: typing.Iterable[str]):
    allowed = list(allowed)
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1) if isinstance(key, str) else []
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            sub = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{location(ctx.source, sub)}: unknown key (allowed here: "
                              f"{', '.join(allowed)}{extra})")


def _build(ctx: _Ctx, cls, data: Any, path: str):
    """Build dataclass ``cls`` from mapping ``data`` found at key path ``path``."""
    if not isinstance(data, Mapping):
        ctx.fail(path, data, f"a mapping with keys {', '.join(f.name for f in _yaml_fields(cls))}")
    fields = _yaml_fields(cls)
    _unknown_keys(ctx, path, data, [f.name for f in fields])
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(hints[f.name]) and _all_defaults(hints[f.name]):
                    kwargs[f.name] = hints[f.name]()
                    continue
                ctx.fail(sub, None, f.metadata.get("doc", ""), missing=True)
            continue
        kwargs[f.name] = _value(ctx, sub, hints[f.name], data[f.name], f.metadata, cls, f.name)
    return cls(**kwargs)


def _yaml_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.name != "source"]


def _all_defaults(cls) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def _value(ctx: _Ctx, path: str, tp, value, meta: Mapping, owner, name: str):
    # Special shapes first.
    if owner is CoresConfig and name == "placement":
        if value == "auto":
            return "auto"
        if isinstance(value, str):
            ctx.fail(path, value, "'auto' or a list of NoC node ids")
        return _int_list(ctx, path, value, {"min": 0})
    if owner is NocConfig and name == "dims":
        return _int_list(ctx, path, value, meta, length=2)
    if owner is NocConfig and name == "memory_nodes":
        return _int_list(ctx, path, value, meta)
    if owner is NocConfig and name == "edges":
        if not isinstance(value, (list, tuple)):
            ctx.fail(path, value, "a list of [a, b] node pairs")
        return tuple(_int_list(ctx, f"{path}[{i}]", e, {"min": 0}, length=2)
                     for i, e in enumerate(value))
    if owner is ChipConfig and name == "memory" and value == "none":
        return None
    if owner is VectorConfig and name == "ops":
        if not isinstance(value, Mapping):
            ctx.fail(path, value, "a mapping from op name to {elems_per_lane_per_cycle, latency_cycles}")
        _unknown_keys(ctx, path, value, VECTOR_OPS)
        ops = dict(DEFAULT_VECTOR_OPS)
        for op, spec in value.items():
            ops[op] = _build(ctx, VectorOpConfig, spec, f"{path}.{op}")
        return MappingProxyType(ops)
    if owner is EnergyConfig and name == "overrides":
        if not isinstance(value, Mapping):
            ctx.fail(path, value, "a mapping from energy-table row to pJ")
        rows = sorted(_energy.TABLES[_energy.DEFAULT_TABLE])
        _unknown_keys(ctx, path, value, rows)
        return MappingProxyType({k: _scalar(ctx, f"{path}.{k}", float, v, meta)
                                 for k, v in value.items()})
    if owner is MemoryConfig and name == "timing_overrides":
        if not isinstance(value, Mapping):
            ctx.fail(path, value, "a mapping from timing name to cycles")
        _unknown_keys(ctx, path, value, DRAM_TIMING_KEYS)
        return MappingProxyType({k: _scalar(ctx, f"{path}.{k}", int, v, {"min": 1, "max": 10**7})
                                 for k, v in value.items()})
    # Generic shapes.
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            ctx.fail(path, value, "a mapping, or 'none'")
        return _value(ctx, path, args[0], value, meta, owner, name)
    if dataclasses.is_dataclass(tp):
        return _build(ctx, tp, value, path)
    if value is None:
        ctx.fail(path, value, f"{_type_name(tp)}; an empty value is not allowed")
    return _scalar(ctx, path, tp, value, meta)


# --------------------------------------------------------------------------------------------
# Cross-field rules
# --------------------------------------------------------------------------------------------


def noc_node_count(noc: NocConfig) -> int:
    if noc.topology in ("mesh", "torus"):
        return noc.dims[0] * noc.dims[1]
    if noc.topology == "edges" and noc.nodes == 0:
        return 1 + max(max(e) for e in noc.edges)
    return noc.nodes


def resolve_placement(cores: CoresConfig, noc: NocConfig) -> tuple[int, ...]:
    """Explicit placement, or the first ``count`` NoC nodes that hold no memory controller
    (falling back to all nodes in order when there are not enough of those)."""
    if cores.placement != "auto":
        return tuple(cores.placement)
    n = noc_node_count(noc)
    free = [i for i in range(n) if i not in set(noc.memory_nodes)]
    if len(free) < cores.count:
        free = list(range(n))
    return tuple(free[: cores.count])


def _cross_check(ctx: _Ctx, c: ChipConfig) -> None:
    s = c.cores.systolic
    if DTYPES[s.input_dtype].is_int != DTYPES[s.weight_dtype].is_int:
        ctx.fail("cores.systolic.weight_dtype", s.weight_dtype,
                 f"an {'integer' if DTYPES[s.input_dtype].is_int else 'floating'} type, "
                 f"like input_dtype {s.input_dtype!r}")
    if not accumulator_ok(s.input_dtype, s.acc_dtype):
        allowed = "int32" if DTYPES[s.input_dtype].is_int else "fp16, bf16 or fp32"
        ctx.fail("cores.systolic.acc_dtype", s.acc_dtype,
                 f"{allowed} for input_dtype {s.input_dtype!r}")

    sram = c.cores.sram
    stripe = sram.banks * sram.bank_width_bytes
    if sram.size_bytes % stripe:
        ctx.fail("cores.sram.size_bytes", sram.size_bytes,
                 f"a multiple of banks x bank_width_bytes = {stripe}")

    noc = c.noc
    if noc.topology in ("mesh", "torus"):
        if not noc.dims:
            ctx.fail("noc.dims", None, f"[x, y] for topology {noc.topology!r}", missing=True)
        if noc.nodes:
            ctx.fail("noc.nodes", noc.nodes, f"only for ring, crossbar and edges; {noc.topology} "
                     "takes its size from dims")
    else:
        if noc.dims:
            ctx.fail("noc.dims", list(noc.dims), f"only for mesh and torus; {noc.topology} takes "
                     "'nodes'")
        if noc.topology in ("ring", "crossbar") and noc.nodes < 1:
            ctx.fail("noc.nodes", noc.nodes or None, f"the router count (>= 1) for topology "
                     f"{noc.topology!r}", missing=not noc.nodes)
    if noc.topology == "edges":
        if not noc.edges:
            ctx.fail("noc.edges", None, "a list of [a, b] links for topology 'edges'", missing=True)
    elif noc.edges:
        ctx.fail("noc.edges", [list(e) for e in noc.edges], "only with topology 'edges'")
    n_nodes = noc_node_count(noc)
    if noc.topology == "edges":
        for i, (a, b) in enumerate(noc.edges):
            if a == b:
                ctx.fail(f"noc.edges[{i}]", [a, b], "a link between two different nodes")
            if max(a, b) >= n_nodes:
                ctx.fail(f"noc.edges[{i}]", [a, b], f"node ids below noc.nodes = {n_nodes}")
        import networkx as nx
        g = nx.Graph()
        g.add_nodes_from(range(n_nodes))
        g.add_edges_from(noc.edges)
        if not nx.is_connected(g):
            comps = sorted(sorted(cc)[0] for cc in nx.connected_components(g))
            ctx.fail("noc.edges", f"{len(comps)} separate parts (starting at nodes {comps[:4]})",
                     "a connected network: every node must reach every other")
    for i, node in enumerate(noc.memory_nodes):
        if node >= n_nodes:
            ctx.fail(f"noc.memory_nodes[{i}]", node, f"a node id below {n_nodes}, the NoC size")
    if len(set(noc.memory_nodes)) != len(noc.memory_nodes):
        ctx.fail("noc.memory_nodes", list(noc.memory_nodes), "distinct node ids")
    if c.memory is not None and not noc.memory_nodes:
        ctx.fail("noc.memory_nodes", None, "at least one node id where memory controllers "
                 "attach, since memory is present", missing=True)
    if c.memory is None and noc.memory_nodes:
        ctx.fail("noc.memory_nodes", list(noc.memory_nodes), "empty: memory is 'none'")

    cores = c.cores
    if cores.placement == "auto":
        if cores.count > n_nodes:
            ctx.fail("cores.count", cores.count, f"at most {n_nodes}, the routers in the NoC")
    else:
        if len(cores.placement) != cores.count:
            ctx.fail("cores.placement", list(cores.placement),
                     f"exactly cores.count = {cores.count} node ids")
        for i, node in enumerate(cores.placement):
            if node >= n_nodes:
                ctx.fail(f"cores.placement[{i}]", node, f"a node id below {n_nodes}, the NoC size")
        if len(set(cores.placement)) != len(cores.placement):
            ctx.fail("cores.placement", list(cores.placement), "distinct node ids, one core each")

    if c.memory is not None:
        ctl = c.memory.controller
        if ctl.write_low_watermark >= ctl.write_high_watermark:
            ctx.fail("memory.controller.write_low_watermark", ctl.write_low_watermark,
                     f"below write_high_watermark = {ctl.write_high_watermark}")
        from tilesim.arch.dram import check_memory_config   # the standard's own rules
        check_memory_config(c.memory, lambda key, value, allowed: ctx.fail(
            f"memory.{key}", value, allowed))

    for name, spec in c.cores.vector.ops.items():
        if spec.elems_per_lane_per_cycle * c.cores.vector.lanes < 1e-3:
            ctx.fail(f"cores.vector.ops.{name}.elems_per_lane_per_cycle",
                     spec.elems_per_lane_per_cycle, "a throughput of at least 0.001 elements/cycle")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""Where the shipped presets live (configs/ at the top of the source tree)."""


def preset_names() -> list[str]:
    """Names of the shipped chip presets (file stems in configs/)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str | Path) -> Path:
    """A path, or a preset name such as 'tpu-v1' -> configs/tpu-v1.yaml."""
    p = Path(name_or_path)
    if p.exists():
        return p
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.exists() and not p.suffix:
        return preset
    hint = difflib.get_close_matches(str(name_or_path), preset_names(), n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"{name_or_path}: no such file or preset (presets: "
                      f"{', '.join(preset_names())}{extra})")


def from_dict(data: Any, source: str = "") -> ChipConfig:
    """Validate a parsed mapping and build a ChipConfig; raises ConfigError."""
    ctx = _Ctx(source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(f"{location(source, '')}: the top level must be a mapping of keys "
                          f"(version, name, clock_ghz, cores, noc, memory, energy), not {kind}")
    cfg = _build(ctx, ChipConfig, data, "")
    cfg = dataclasses.replace(cfg, source=source)
    _cross_check(ctx, cfg)
    return cfg


def loads(text: str, source: str = "<string>") -> ChipConfig:
    """Parse YAML text into a ChipConfig; raises ConfigError."""
    return from_dict(read_yaml(text, source), source)


def load(name_or_path: str | Path) -> ChipConfig:
    """Load a chip config from a file path or a preset name; raises ConfigError."""
    path = resolve_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    return loads(text, str(path))


def to_dict(cfg: ChipConfig, *, full: bool = False) -> dict:
    """The config as plain data, keys at their default left out (from_dict inverts it).

    ``full=True`` keeps every key with its default too (except empty lists that mean "not
    given", such as ``noc.dims`` of a ring): the fully resolved form, the same however the
    YAML was written (sizes as strings, defaults given or omitted)."""
    def default_of(f):
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return dataclasses.MISSING

    def conv(v):
        if dataclasses.is_dataclass(v):
            out = {}
            for f in _yaml_fields(type(v)):
                x = getattr(v, f.name)
                if x == default_of(f) and not dataclasses.is_dataclass(x) and (
                        not full or x == ()):       # () marks "not given" (noc.dims, ...)
                    continue
                out[f.name] = conv(x)
            return out
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v
    d = conv(cfg)
    if cfg.memory is None:
        d["memory"] = "none"
    return d


def schema_lines(cls=ChipConfig, prefix: str = "") -> list[str]:
    """One line per key: path, default or (required), documentation, allowed values."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in _yaml_fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING:
            shown = " (required)"
        elif dataclasses.is_dataclass(default):
            shown = ""
        elif isinstance(default, Mapping):
            shown = " = {}" if not default else " = built-in defaults"
        else:
            shown = f" = {_show(default)}"
        choices = f.metadata.get("choices")
        allowed = f" [{' | '.join(map(str, choices))}]" if choices else ""
        out.append(f"{path}{shown}: {f.metadata.get('doc', '')}{allowed}")
        if dataclasses.is_dataclass(tp) and tp is not VectorOpConfig:
            out.extend(schema_lines(tp, path + "."))
    return out
