"""Off-chip memory: standards as data, the per-channel controller, address mapping, energy.

The functions here answer the questions the rest of tilesim asks of a memory config without
running the cycle-level model: is it legal, how much does it hold, what is its peak bandwidth.
The model itself:

- ``standards.py``  the standards (DDR3, HBM2, HBM2E, HBM3, GDDR6; plus DRAMsim3's HBM2
  organisation for comparisons) as data: organisation, cited timing presets, constraint rows,
  IDD figures;
- ``compile.py``    timings at a data rate with overrides, ordering rules, constraint arrays;
- ``mapping.py``    address fields -> channel, bank group, bank, row, column;
- ``model.py``      ``build`` -> tables for the numba kernels, ``simulate`` -> results,
  closed forms;
- ``energy.py``     per-command energy and background power, calibrated I/O term;
- ``patterns.py``   stream / random / strided request traces;
- ``checker.py``    replays a command trace against the standard's rows (tests only);
- ``tilesim/arch/_engine.py`` (DRAM section) the numba controller and driver.

Importing this package does not import numba.
"""
from __future__ import annotations

from typing import Callable

from tilesim.arch.dram.standards import ALL, STANDARDS, VARIANTS  # noqa: F401


def data_rate_gbps(mem) -> float:
    """Per-pin data rate in Gb/s (the config's, else the standard's default)."""
    return mem.data_rate_gbps or ALL[mem.standard].default_rate_gbps


def peak_gbps(mem) -> float:
    """Peak bandwidth in GB/s: devices x pins per device x rate / 8."""
    std = ALL[mem.standard]
    return mem.devices * std.pins_per_device * data_rate_gbps(mem) / 8


def capacity_bytes(mem) -> int:
    """Total capacity in bytes (the config's, else the standard's default per device)."""
    return mem.capacity_bytes or mem.devices * ALL[mem.standard].default_device_bytes


def channels(mem) -> int:
    """Independent channels (pseudo-channels where the standard has them) in the system."""
    return mem.devices * ALL[mem.standard].channels_per_device


def check_memory_config(mem, fail: Callable[[str, object, str], None]) -> None:
    """The standard's own rules for a memory config; ``fail(key, value, allowed)`` raises.

    Checks the data rate range, the timing ordering rules after overrides (tRC >= tRAS + tRP
    and the rest of ``standards.ORDERING_RULES``; the failing key is the overridden one, e.g.
    ``timing_overrides.nRC``) and the address mapping."""
    from tilesim.arch.dram import mapping as _mapping
    from tilesim.arch.dram.compile import check_timings, resolve_timings

    std = ALL[mem.standard]
    lo, hi = std.rate_range_gbps
    if mem.data_rate_gbps and not lo <= mem.data_rate_gbps <= hi:
        fail("data_rate_gbps", mem.data_rate_gbps,
             f"a per-pin rate from {lo} to {hi} Gb/s for {std.name}, or 0 for its default "
             f"{std.default_rate_gbps}")
    overrides = dict(mem.timing_overrides)
    timings = resolve_timings(std, mem.data_rate_gbps or None, overrides)
    check_timings(std, timings, set(overrides), fail)
    text = mem.controller.address_mapping
    if text != "default":
        try:
            _mapping.parse(text, {"ch": channels(mem), "bg": std.bankgroups,
                                  "ba": std.banks_per_group, "ro": std.rows, "co": std.columns})
        except ValueError as e:
            fail("controller.address_mapping", text, str(e))
