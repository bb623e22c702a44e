"""Cost and area proxies of a chip config, from cited figures.

**Memory cost.** Off-chip memory priced per GB from section 3.4 ("Memory cost, $/GB") of the
shared reference notes ``energy_cost_chips.md``. Memory is sold by device capacity in binary
units (an 8 Gb GDDR6 IC holds 2^30 bytes and is quoted as "1 GB"), so a price here is per 2^30
bytes. Each standard belongs to a price class with a central estimate and the range the notes
give:

- **HBM** (HBM2, HBM2E, HBM3): $7/GB, LLMCompass ``cost_model.py`` citing the DRAMeXchange spot
  price of Oct 2023 (sureness V). HBM is sold under contract only, so every HBM figure is an
  analyst estimate. The range runs to $19/GB: HBM2 4-Hi 8 GB stacks cost $120-150 in 2018
  (S). HBM3/HBM3E is likely dearer than the HBM2E-class central figure (TrendForce: HBM3E at
  4-5x server DDR5, V), so treat HBM3 costs as a lower bound.
- **GDDR6**: $3.4/GB, an 8 Gb IC at $3.364 spot in mid-2023 (DRAMeXchange via 3DCenter, S);
  the range runs to $13/GB, the Feb 2022 peak (S). Launch prices in 2018 were $11-14 per GB.
- **DDR3**: no cited figure (the notes only price DDR5, $2.4/GB), so its cost is unknown
  (``None``) rather than guessed.

The ratio to quote is HBM about 2x GDDR6 per GB (7 vs 3.4), as the notes say.

**Area proxy.** ``MAC units + SRAM bytes`` of the whole chip, unweighted: no cited mm^2 per MAC or
per SRAM byte exists in the reference notes yet, so this is a count, not an area, and SRAM
dominates it on every preset. Use it to rank designs that trade SRAM against arrays only with
that in mind.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
REFERENCE = "energy_cost_chips.md section 3.4"


@dataclass(frozen=True)
class MemoryPrice:
    """A price class of off-chip memory, in US dollars per GB (2^30 bytes)."""

    name: str
    usd_per_gb: float      # central estimate
    low: float             # range given by the cited figures
    high: float
    source: str            # what the figure is, with the reference it comes from

    def as_dict(self) -> dict:
        return {"class": self.name, "usd_per_gb": self.usd_per_gb, "low": self.low,
                "high": self.high, "source": self.source}


HBM = MemoryPrice(
    "HBM (HBM2E/HBM3 class)", 7.0, 7.0, 19.0,
    f"$7/GB: LLMCompass cost_model.py, DRAMeXchange spot Oct 2023 (V); up to $15-19/GB for "
    f"HBM2 in 2018 (S); HBM3E costs more ({REFERENCE})")
GDDR6 = MemoryPrice(
    "GDDR6", 3.4, 3.4, 13.0,
    f"$3.364 per 8 Gb IC, DRAMeXchange spot mid-2023 via 3DCenter (S); peak $13/GB Feb 2022 "
    f"(S) ({REFERENCE})")

MEMORY_PRICES: dict[str, MemoryPrice | None] = {
    "hbm2": HBM, "hbm2e": HBM, "hbm3": HBM, "gddr6": GDDR6,
    "ddr3": None,        # no cited $/GB for DDR3
}
"""Memory standard -> its price class (None: no cited figure)."""


def memory_price(standard: str) -> MemoryPrice | None:
    """The price class of a memory standard, or None when no figure is cited for it."""
    if standard not in MEMORY_PRICES:
        raise KeyError(f"no price class for memory standard {standard!r} "
                       f"(known: {', '.join(MEMORY_PRICES)})")
    return MEMORY_PRICES[standard]


def memory_capacity_bytes(cfg) -> int:
    """Off-chip memory capacity of a chip config in bytes (0 for an SRAM-only chip)."""
    from tilesim.arch import dram

    return 0 if cfg.memory is None else dram.capacity_bytes(cfg.memory)


def memory_cost_usd(cfg, which: str = "usd_per_gb") -> float | None:
    """Estimated cost of the chip's off-chip memory in US dollars.

    ``which`` picks the central estimate (``usd_per_gb``) or an end of the cited range
    (``low``, ``high``). 0.0 for an SRAM-only chip (``memory: none``); None when the standard
    has no cited price (DDR3)."""
    if cfg.memory is None:
        return 0.0
    price = memory_price(cfg.memory.standard)
    if price is None:
        return None
    return memory_capacity_bytes(cfg) / GIB * getattr(price, which)


def area_proxy(cfg) -> int:
    """MAC units plus SRAM bytes of the whole chip (see the module docstring for caveats)."""
    return cfg.peak_macs_per_cycle + cfg.sram_total_bytes
