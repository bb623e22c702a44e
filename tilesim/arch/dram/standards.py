"""DRAM standards as data: organisation per device and the range of legal data rates.

Sources: ../shared/reference/dram_standards.md ("DS" below), which gathers JEDEC figures and the
Ramulator 2 / DRAMsim3 presets. Timing tables and energy per command join these in the DRAM
model proper.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Standard:
    name: str
    pins_per_device: int            # data pins of one stack / chip / DIMM channel
    channels_per_device: int        # independent (pseudo-)channels per device
    default_rate_gbps: float        # per-pin data rate when the config gives none
    rate_range_gbps: tuple[float, float]
    default_device_bytes: int       # capacity of one device when the config gives none
    source: str


STANDARDS = {
    s.name: s
    for s in (
        Standard("ddr3", 64, 1, 2.133, (0.8, 2.133), 8 * 2**30,
                 "JEDEC DDR3-800..2133, one 64-bit channel per device; 8 GiB per channel as in "
                 "TPU v1's two channels (energy_cost_chips.md)"),
        Standard("hbm2", 1024, 16, 2.0, (1.0, 2.4), 8 * 2**30,
                 "JESD235A/B: 1024 b per stack, 8 ch x 2 pseudo-channels of 64 b, 2.0-2.4 Gb/s, "
                 "8 GB 8-high (DS 'Bandwidth per device')"),
        Standard("hbm2e", 1024, 16, 3.2, (2.4, 3.6), 16 * 2**30,
                 "JESD235C: HBM2 organisation at 3.2 Gb/s (SK hynix 3.6), 16 GB (DS)"),
        Standard("hbm3", 1024, 32, 6.4, (3.2, 6.4), 16 * 2**30,
                 "JESD238: 16 ch x 2 pseudo-channels of 32 b, 6.4 Gb/s, 819 GB/s per stack (DS)"),
        Standard("gddr6", 32, 2, 16.0, (10.0, 24.0), 2 * 2**30,
                 "GDDR6: 32 b per chip as 2 x16 channels, 14-16 Gb/s typical, up to 24; "
                 "16 Gb (2 GB) chips (DS 'Bandwidth per device')"),
    )
}
