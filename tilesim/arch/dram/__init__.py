"""Off-chip memory: standards as data, the per-channel controller, address mapping.

The functions here answer the questions the rest of tilesim asks of a memory config without
running the cycle-level model: is it legal, how much does it hold, what is its peak bandwidth.
"""
from __future__ import annotations

from typing import Callable

from tilesim.arch.dram.standards import STANDARDS


def data_rate_gbps(mem) -> float:
    """Per-pin data rate in Gb/s (the config's, else the standard's default)."""
    return mem.data_rate_gbps or STANDARDS[mem.standard].default_rate_gbps


def peak_gbps(mem) -> float:
    """Peak bandwidth in GB/s: devices x pins per device x rate / 8."""
    std = STANDARDS[mem.standard]
    return mem.devices * std.pins_per_device * data_rate_gbps(mem) / 8


def capacity_bytes(mem) -> int:
    """Total capacity in bytes (the config's, else the standard's default per device)."""
    return mem.capacity_bytes or mem.devices * STANDARDS[mem.standard].default_device_bytes


def channels(mem) -> int:
    """Independent channels (pseudo-channels where the standard has them) in the system."""
    return mem.devices * STANDARDS[mem.standard].channels_per_device


def check_memory_config(mem, fail: Callable[[str, object, str], None]) -> None:
    """The standard's own rules for a memory config; ``fail(key, value, allowed)`` raises."""
    std = STANDARDS[mem.standard]
    lo, hi = std.rate_range_gbps
    if mem.data_rate_gbps and not lo <= mem.data_rate_gbps <= hi:
        fail("data_rate_gbps", mem.data_rate_gbps,
             f"a per-pin rate from {lo} to {hi} Gb/s for {std.name}, or 0 for its default "
             f"{std.default_rate_gbps}")
