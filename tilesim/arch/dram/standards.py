"""DRAM standards as data: organisation, timing presets, constraint rows and energy figures.

A standard is declarative (Ramulator 2.1's idea, STYLE 3.3): an organisation, a list of named
timings with how each one scales with the clock, one or more timing presets (the numbers, each
with its source), constraint rows ``(level, before, after, latency expression, window)`` and the
current/voltage figures energy is computed from. ``tilesim.arch.dram.compile`` turns a standard
plus a data rate and a config's overrides into numpy arrays; the numba controller reads only
those arrays, and the checker (``checker.py``) reads these rows again, independently.

Units. Timings are in cycles of the DRAM command clock CK (tCK ns = bits_per_ck / rate Gb/s).
Sources are ``../shared/reference/dram_standards.md`` ("DS" below: it gathers the Ramulator 2.1
and DRAMsim3 presets and JEDEC headline figures) and ``../shared/reference/energy_cost_chips.md``
("ECC"). A timing of kind ``ns`` is an analog delay: a preset gives it in cycles at the preset's
own tCK, and at another data rate it is re-rounded up to the new tCK, as Ramulator does for its
ns-based secondary timings. Kind ``ck`` is a clock count that does not change with the rate
(burst length, tCCD). Kind ``expr`` is derived from other timings after overrides.

What is not modelled (common to all standards): per-bank refresh (REFpb/REFSB; all-bank REF
only), refresh postponing, HBM3 stack IDs (one SID: 16 banks per pseudo-channel, rows doubled
to keep capacity), multi-cycle ACT on the HBM command bus, power-down and self-refresh, tPPD.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

COMMANDS = ("ACT", "PRE", "RD", "WR", "REF")
"""DRAM commands, in the index order the compiled arrays and the command trace use."""

LEVELS = ("channel", "bankgroup", "bank")
"""Levels a constraint row applies at: both commands in the same channel / bank group / bank."""

ROW_COMMANDS = ("ACT", "PRE", "REF")
COLUMN_COMMANDS = ("RD", "WR")

TIMING_NAMES = ("nCL", "nCWL", "nBL", "nRCD", "nRCDW", "nRP", "nRAS", "nRC", "nRTP", "nWR",
                "nWTR_S", "nWTR_L", "nRRD_S", "nRRD_L", "nFAW", "nCCD_S", "nCCD_L",
                "nRTW", "nREFI", "nRFC")
"""Every standard defines exactly these (config.DRAM_TIMING_KEYS must list the same; a test
checks it). _S/_L: different / same bank group. nRCDW: ACT to WR. nRTW: RD to WR, channel."""


@dataclass(frozen=True)
class TimingSpec:
    """How one named timing is obtained for a given data rate."""

    name: str
    kind: str                 # "ns" | "ck" | "expr"
    expr: str = ""            # kind "expr": the formula over other timings
    at_least: str = ""        # applied unless the user overrides this timing, e.g. "nRAS + nRP"
    doc: str = ""


@dataclass(frozen=True)
class TimingPreset:
    """Timing values in CK cycles at this preset's data rate (and so its tCK)."""

    rate_gbps: float
    values: Mapping[str, int]
    source: str


@dataclass(frozen=True)
class Constraint:
    """The ``after`` command may issue ``latency`` cycles after the ``window``-th most recent
    ``before`` command at the same ``level`` (same channel, bank group or bank), not earlier."""

    level: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    latency: str
    window: int = 1
    why: str = ""


@dataclass(frozen=True)
class OrderingRule:
    """A timing must be at least an expression of others (checked after overrides)."""

    timing: str
    at_least: str
    why: str


@dataclass(frozen=True)
class EnergySpec:
    """IDD currents (mA) at VDD, as measured for ``unit``, turned into per-command energy the
    way Micron's power calculator and DRAMsim3 do (energy.py has the formulas).

    ``unit_*`` describe what the currents cover and the timings they were measured with; the
    model scales them to its own channel: by width for background and refresh, by row size for
    activation, per bit for reads and writes. ``io_pj_per_bit`` is not from IDD: it is the
    interface/PHY term, calibrated so that streaming reads at the default rate total
    ``target_pj_per_bit`` (energy.py, ``calibrated_io_pj_per_bit``)."""

    vdd: float
    idd0: float
    idd2n: float
    idd3n: float
    idd4r: float
    idd4w: float
    idd5ab: float
    unit: str                       # what the IDD figures cover
    unit_width_bits: int
    unit_row_bytes: int
    unit_trc_ns: float
    unit_tras_ns: float
    unit_burst_ns: float
    unit_burst_bits: int
    unit_trfc_ns: float
    core_scale: float               # multiplies every IDD-derived energy (1 unless assumed)
    source: str
    target_pj_per_bit: float        # whole-device energy per bit on streaming reads
    target_source: str


@dataclass(frozen=True)
class Standard:
    """One DRAM standard: organisation of one device and one channel, timings, rows, energy.

    The first seven fields are what the config layer uses without running the model
    (``tilesim.arch.dram.peak_gbps`` and friends). A *channel* is the unit one controller
    drives: an HBM pseudo-channel, a GDDR6 x16 channel, a DDR3 64-bit channel."""

    name: str
    pins_per_device: int            # data pins of one stack / chip / DDR channel
    channels_per_device: int        # independent (pseudo-)channels per device
    default_rate_gbps: float        # per-pin data rate when the config gives none
    rate_range_gbps: tuple[float, float]
    default_device_bytes: int       # capacity of one device when the config gives none
    source: str
    # -- organisation of one channel --
    channel_width_bits: int = 0
    burst_length: int = 0           # beats per column command
    bits_per_ck: int = 2            # data beats per pin per CK cycle (2 = DDR)
    bankgroups: int = 1
    banks_per_group: int = 1
    rows: int = 0                   # per bank
    columns: int = 0                # access granules (one burst each) per row
    command_bus: str = "single"     # "single": one command per cycle; "dual": row + column buses
    default_mapping: str = ""       # address fields from most to least significant
    org_source: str = ""
    # -- timing --
    timings: tuple[TimingSpec, ...] = ()
    presets: tuple[TimingPreset, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    energy: EnergySpec | None = None
    notes: str = ""

    @property
    def granule_bytes(self) -> int:
        """Bytes moved by one column command (channel width x burst length / 8)."""
        return self.channel_width_bits * self.burst_length // 8

    @property
    def row_bytes(self) -> int:
        return self.columns * self.granule_bytes

    @property
    def banks(self) -> int:
        return self.bankgroups * self.banks_per_group

    @property
    def channel_bytes(self) -> int:
        return self.rows * self.banks * self.row_bytes

    def tck_ns(self, rate_gbps: float) -> float:
        """Command-clock period at a per-pin data rate."""
        return self.bits_per_ck / rate_gbps

    @property
    def min_nbl(self) -> int:
        """Cycles one burst occupies the data bus: burst length / beats per CK."""
        return self.burst_length // self.bits_per_ck

    def timing(self, name: str) -> TimingSpec:
        return next(t for t in self.timings if t.name == name)


# ------------------------------------------------------------------------------------------
# Constraint rows shared by every standard here. They are the JEDEC relations Ramulator 2.1
# writes for DDR3, HBM2, HBM3 and GDDR6 (DS; Ramulator 2.1 python/ramulator/dram/*.py), with
# tilesim's names: a channel here is Ramulator's PseudoChannel for HBM, so its per-PC rows are
# channel rows. RDA/WRA and per-bank refresh are not used, so their rows are left out.
# ------------------------------------------------------------------------------------------

JEDEC_ROWS: tuple[Constraint, ...] = (
    # data bus: one burst at a time
    Constraint("channel", ("RD",), ("RD",), "nBL", why="data bus busy for a burst"),
    Constraint("channel", ("WR",), ("WR",), "nBL", why="data bus busy for a burst"),
    # column to column
    Constraint("channel", ("RD",), ("RD",), "nCCD_S", why="tCCD_S, other bank group"),
    Constraint("channel", ("WR",), ("WR",), "nCCD_S", why="tCCD_S, other bank group"),
    Constraint("bankgroup", ("RD",), ("RD",), "nCCD_L", why="tCCD_L, same bank group"),
    Constraint("bankgroup", ("WR",), ("WR",), "nCCD_L", why="tCCD_L, same bank group"),
    Constraint("channel", ("RD",), ("WR",), "nRTW", why="read-to-write bus turnaround"),
    Constraint("channel", ("WR",), ("RD",), "nCWL + nBL + nWTR_S",
               why="write data, then tWTR_S before a read"),
    Constraint("bankgroup", ("WR",), ("RD",), "nCWL + nBL + nWTR_L",
               why="write data, then tWTR_L before a read in the same bank group"),
    # activation
    Constraint("channel", ("ACT",), ("ACT",), "nRRD_S", why="tRRD_S"),
    Constraint("bankgroup", ("ACT",), ("ACT",), "nRRD_L", why="tRRD_L"),
    Constraint("channel", ("ACT",), ("ACT",), "nFAW", window=4, why="tFAW: 4 ACTs per window"),
    Constraint("bank", ("ACT",), ("ACT",), "nRC", why="tRC"),
    Constraint("bank", ("ACT",), ("RD",), "nRCD", why="tRCD (read)"),
    Constraint("bank", ("ACT",), ("WR",), "nRCDW", why="tRCD (write)"),
    Constraint("bank", ("ACT",), ("PRE",), "nRAS", why="tRAS"),
    Constraint("bank", ("PRE",), ("ACT",), "nRP", why="tRP"),
    Constraint("bank", ("RD",), ("PRE",), "nRTP", why="read to precharge"),
    Constraint("bank", ("WR",), ("PRE",), "nCWL + nBL + nWR", why="write recovery"),
    # refresh (all-bank)
    Constraint("channel", ("ACT",), ("REF",), "nRC", why="ACT to REF"),
    Constraint("channel", ("PRE",), ("REF",), "nRP", why="banks precharged before REF"),
    Constraint("channel", ("REF",), ("ACT", "REF"), "nRFC", why="tRFC"),
)

SINGLE_BUS_ROWS: tuple[Constraint, ...] = (
    Constraint("channel", COMMANDS, COMMANDS, "1", why="one command bus: one command per cycle"),
)
DUAL_BUS_ROWS: tuple[Constraint, ...] = (
    Constraint("channel", ROW_COMMANDS, ROW_COMMANDS, "1", why="row command bus"),
    Constraint("channel", COLUMN_COMMANDS, COLUMN_COMMANDS, "1", why="column command bus"),
)

ORDERING_RULES: tuple[OrderingRule, ...] = (
    OrderingRule("nRC", "nRAS + nRP", "tRC >= tRAS + tRP"),
    OrderingRule("nRAS", "nRCD", "tRAS >= tRCD"),
    OrderingRule("nCCD_L", "nCCD_S", "tCCD_L >= tCCD_S"),
    OrderingRule("nRRD_L", "nRRD_S", "tRRD_L >= tRRD_S"),
    OrderingRule("nWTR_L", "nWTR_S", "tWTR_L >= tWTR_S"),
    OrderingRule("nFAW", "nRRD_S", "tFAW >= tRRD_S"),
    OrderingRule("nREFI", "nRFC + 1", "tREFI > tRFC"),
    OrderingRule("nRTW", "nCL + nBL - nCWL", "read data leaves the bus before write data"),
)
"""Relations every standard's timings obey; check_memory_config names the overridden key."""


def _specs(**special: TimingSpec) -> tuple[TimingSpec, ...]:
    """The standard timing list: 'ns' for analog delays, 'ck' for burst/CCD clock counts,
    with per-standard replacements."""
    ck = {"nBL", "nCCD_S", "nCCD_L"}
    out = []
    for name in TIMING_NAMES:
        if name in special:
            out.append(special[name])
        else:
            out.append(TimingSpec(name, "ck" if name in ck else "ns",
                                  at_least="nRAS + nRP" if name == "nRC" else ""))
    return tuple(out)


def _preset(rate: float, source: str, **values: int) -> TimingPreset:
    return TimingPreset(rate, MappingProxyType(dict(values)), source)


_RTW_DDR = TimingSpec("nRTW", "expr", expr="nCL + nBL + 2 - nCWL",
                      doc="Ramulator 2.1 DDR3/HBM2 read-to-write row (DS 2.1)")

# ------------------------------------------------------------------------------------------
# Energy figures
# ------------------------------------------------------------------------------------------

_HBM2_IDD = dict(
    vdd=1.2, idd0=65, idd2n=40, idd3n=55, idd4r=390, idd4w=500, idd5ab=250,
    unit="one 128-bit HBM2 legacy channel, 2 KB row (DRAMsim3 HBM2_8Gb_x128 [power])",
    unit_width_bits=128, unit_row_bytes=2048, unit_trc_ns=48.0, unit_tras_ns=34.0,
    unit_burst_ns=2.0, unit_burst_bits=512, unit_trfc_ns=260.0,
    source="DS 2.1: DRAMsim3 HBM2_8Gb_x128, VDD 1.2 V, IDD0 65, IDD2N 40, IDD3N 55, IDD4R 390, "
           "IDD4W 500, IDD5AB 250 mA; tCK 1 ns, tRC 48, tRAS 34, BL4 = 2 ns, tRFC 260",
)

HBM2_ENERGY = EnergySpec(
    **_HBM2_IDD, core_scale=1.0, target_pj_per_bit=3.9,
    target_source="ECC 3.3: HBM2 3.9 pJ/bit (Accelergy CACTI plug-in citing Chatterjee et al., V)")
HBM2E_ENERGY = EnergySpec(
    **_HBM2_IDD, core_scale=1.0, target_pj_per_bit=6.0,
    target_source="ECC 3.3 / DS 'Energy per bit': HBM2E 6.0 pJ/bit, Micron Ultra-Bandwidth "
                  "Solutions table (average device power), V")
HBM3_ENERGY = EnergySpec(
    **_HBM2_IDD, core_scale=(1.1 / 1.2) ** 2, target_pj_per_bit=3.9,
    target_source="no primary HBM3 figure exists (ECC 3.3: 'not found reliably'); used Samsung's "
                  "HBM3E 3.9 pJ/bit (DS 'Energy per bit'), labelled as the HBM3E figure")
# HBM3 core: no IDD figures found. Assumption (A): HBM2's IDD energies scaled by
# (1.1 V / 1.2 V)^2 for JESD238's 1.1 V core (DS 2.2).

GDDR6_ENERGY = EnergySpec(
    vdd=1.35, idd0=71, idd2n=60, idd3n=61, idd4r=248, idd4w=231, idd5ab=286,
    unit="one x16 GDDR6 device as DRAMsim3 GDDR6_8Gb_x16 counts it (= one 16-bit channel), "
         "4 KB row",
    unit_width_bits=16, unit_row_bytes=4096, unit_trc_ns=78 * 0.66, unit_tras_ns=54 * 0.66,
    unit_burst_ns=2 * 0.66, unit_burst_bits=256, unit_trfc_ns=126 * 0.66,
    core_scale=1.0,
    source="DS 2.3: DRAMsim3 GDDR6_8Gb_x16, VDD 1.35 V, IDD0 71, IDD2N 60, IDD3N 61, IDD4R 248, "
           "IDD4W 231, IDD5AB 286 mA; tCK 0.66 ns, tRC 78, tRAS 54, tRFC 126; a BL16 burst "
           "counted as 2 CK (DRAMsim3 counts 1, DS notes it is half of what BL16 takes)",
    target_pj_per_bit=7.5,
    target_source="ECC 3.3 / DS 'Energy per bit': GDDR6 7.5 pJ/bit, Micron Ultra-Bandwidth "
                  "Solutions table (average device power), V")

DDR3_ENERGY = EnergySpec(
    vdd=1.35, idd0=67, idd2n=36, idd3n=51, idd4r=125, idd4w=125, idd5ab=245,
    unit="one x8 DDR3 device, 2 KB row (DRAMsim3 DDR3_8Gb_x8_1600 [power])",
    unit_width_bits=8, unit_row_bytes=2048, unit_trc_ns=39 * 1.25, unit_tras_ns=28 * 1.25,
    unit_burst_ns=4 * 1.25, unit_burst_bits=64, unit_trfc_ns=280 * 1.25,
    core_scale=1.0,
    source="DRAMsim3 configs/DDR3_8Gb_x8_1600.ini: VDD 1.35 V, IDD0 67, IDD2N 36, IDD3N 51, "
           "IDD4R 125, IDD4W 125, IDD5AB 245 mA; tCK 1.25 ns, tRAS 28, tRP 11, BL8, tRFC 280",
    target_pj_per_bit=20.0,
    target_source="ECC 3.1: Horowitz 45 nm DRAM access, 64 bit, 1300-2600 pJ = 20-40 pJ/bit; "
                  "the low end is used (D): no DDR3 whole-device figure in the references")

# ------------------------------------------------------------------------------------------
# The standards
# ------------------------------------------------------------------------------------------

_DDR3_PRESET_SRC = ("Ramulator 2.1 python/ramulator/dram/ddr3.py {bin}; secondary timings from "
                    "its JEDEC tables for x8 (1 KB page): nRRD, nFAW; nRFC 350 ns (8 Gb), "
                    "nREFI 7.8 us")

DDR3 = Standard(
    name="ddr3", pins_per_device=64, channels_per_device=1, default_rate_gbps=2.133,
    rate_range_gbps=(0.8, 2.133), default_device_bytes=8 * 2**30,
    source="JEDEC DDR3-800..2133, one 64-bit channel per device; 8 GiB per channel as in TPU "
           "v1's two channels (energy_cost_chips.md)",
    channel_width_bits=64, burst_length=8, bits_per_ck=2, bankgroups=1, banks_per_group=8,
    rows=2**17, columns=128, command_bus="single", default_mapping="ro-co-ba-bg-ch-co:3",
    org_source="Ramulator 2.1 DDR3_8Gb_x8 org: 8 banks, 2^17 rows, 1 KB page per x8 device; "
               "8 devices per 64-bit rank -> 8 KB row = 128 x 64 B bursts (BL8)",
    timings=_specs(nRCDW=TimingSpec("nRCDW", "expr", expr="nRCD", doc="DDR3 has one tRCD"),
                   nRTW=_RTW_DDR),
    presets=(
        _preset(1.6, _DDR3_PRESET_SRC.format(bin="DDR3_1600K (11-11-11)"),
                nBL=4, nCL=11, nCWL=8, nRCD=11, nRP=11, nRAS=28, nRC=39, nRTP=6, nWR=12,
                nWTR_S=6, nWTR_L=6, nRRD_S=5, nRRD_L=5, nFAW=24, nCCD_S=4, nCCD_L=4,
                nREFI=6240, nRFC=280),
        _preset(2.133, _DDR3_PRESET_SRC.format(bin="DDR3_2133M (13-13-13), tCK 0.9375 ns"),
                nBL=4, nCL=13, nCWL=10, nRCD=13, nRP=13, nRAS=36, nRC=49, nRTP=8, nWR=16,
                nWTR_S=8, nWTR_L=8, nRRD_S=6, nRRD_L=6, nFAW=27, nCCD_S=4, nCCD_L=4,
                nREFI=8319, nRFC=374),
    ),
    constraints=JEDEC_ROWS + SINGLE_BUS_ROWS,
    energy=DDR3_ENERGY,
    notes="No bank groups: _S and _L timings are equal.",
)

_HBM2_ORG = dict(
    pins_per_device=1024, channels_per_device=16,
    channel_width_bits=64, burst_length=4, bits_per_ck=2, bankgroups=4, banks_per_group=4,
    columns=32, command_bus="dual", default_mapping="ro-co-ba-bg-ch-co:4",
)
_HBM2_SRC = ("Ramulator 2.1 HBM2_{r}Mbps (DS 2.1 and python/ramulator/dram/hbm2.py); secondary: "
             "nRRD = max(4, 4 ns), nFAW = max(8, 15 ns), nREFI 3.9 us, nRFC {rfc} ns "
             "({d} Gb per pseudo-channel)")

HBM2 = Standard(
    name="hbm2", default_rate_gbps=2.0, rate_range_gbps=(1.0, 2.4),
    default_device_bytes=8 * 2**30,
    source="JESD235A/B: 1024 b per stack, 8 ch x 2 pseudo-channels of 64 b, 2.0-2.4 Gb/s, "
           "8 GB 8-high (DS 'Bandwidth per device')",
    rows=2**15,
    org_source="pseudo-channel mode as Ramulator 2.1 HBM2: 64-bit PC, BL4 = 32 B, 4 BG x 4 "
               "banks, 1 KB row (32 columns of 32 B); 2^15 rows -> 512 MiB per PC, 8 GiB per "
               "16-PC stack (DS 2.1)",
    timings=_specs(nRTW=_RTW_DDR,
                   nRRD_S=TimingSpec("nRRD_S", "ns", at_least="4"),
                   nRRD_L=TimingSpec("nRRD_L", "ns", at_least="4"),
                   nFAW=TimingSpec("nFAW", "ns", at_least="8")),
    presets=(
        _preset(1.6, _HBM2_SRC.format(r=1600, rfc=260, d=4),
                nBL=2, nCL=10, nCWL=4, nRCD=10, nRCDW=8, nRP=10, nRAS=24, nRC=34, nRTP=4,
                nWR=12, nWTR_S=5, nWTR_L=6, nRRD_S=4, nRRD_L=4, nFAW=12, nCCD_S=2, nCCD_L=4,
                nREFI=3120, nRFC=208),
        _preset(2.0, _HBM2_SRC.format(r=2000, rfc=260, d=4),
                nBL=2, nCL=14, nCWL=5, nRCD=14, nRCDW=12, nRP=14, nRAS=34, nRC=48, nRTP=5,
                nWR=16, nWTR_S=6, nWTR_L=8, nRRD_S=4, nRRD_L=4, nFAW=15, nCCD_S=2, nCCD_L=4,
                nREFI=3900, nRFC=260),
        _preset(2.4, _HBM2_SRC.format(r=2400, rfc=260, d=4) + "; tCK 0.833 ns",
                nBL=2, nCL=17, nCWL=6, nRCD=17, nRCDW=14, nRP=17, nRAS=40, nRC=57, nRTP=6,
                nWR=19, nWTR_S=8, nWTR_L=10, nRRD_S=5, nRRD_L=5, nFAW=19, nCCD_S=2, nCCD_L=4,
                nREFI=4680, nRFC=312),
    ),
    constraints=JEDEC_ROWS + DUAL_BUS_ROWS,
    energy=HBM2_ENERGY,
    **_HBM2_ORG,
)

HBM2E = Standard(
    name="hbm2e", default_rate_gbps=3.2, rate_range_gbps=(2.4, 3.6),
    default_device_bytes=16 * 2**30,
    source="JESD235C: HBM2 organisation at 3.2 Gb/s (SK hynix 3.6), 16 GB (DS)",
    rows=2**16,
    org_source="HBM2's pseudo-channel organisation (DS 2.1, 'HBM2E: no preset in either "
               "simulator'); 2^16 rows -> 1 GiB per PC, 16 GiB per stack",
    timings=HBM2.timings,
    presets=(
        _preset(2.4, "DS 2.1 suggestion (not a sourced preset): Ramulator 2.1 HBM2_2400Mbps "
                     "values kept in ns and re-rounded to the new tCK; nRFC 350 ns for 8 Gb per "
                     "pseudo-channel (Ramulator 2.1 HBM2 tRFC table)",
                nBL=2, nCL=17, nCWL=6, nRCD=17, nRCDW=14, nRP=17, nRAS=40, nRC=57, nRTP=6,
                nWR=19, nWTR_S=8, nWTR_L=10, nRRD_S=5, nRRD_L=5, nFAW=19, nCCD_S=2, nCCD_L=4,
                nREFI=4680, nRFC=420),
    ),
    constraints=JEDEC_ROWS + DUAL_BUS_ROWS,
    energy=HBM2E_ENERGY,
    **_HBM2_ORG,
)

HBM3 = Standard(
    name="hbm3", pins_per_device=1024, channels_per_device=32, default_rate_gbps=6.4,
    rate_range_gbps=(3.2, 6.4), default_device_bytes=16 * 2**30,
    source="JESD238: 16 ch x 2 pseudo-channels of 32 b, 6.4 Gb/s, 819 GB/s per stack (DS)",
    channel_width_bits=32, burst_length=8, bits_per_ck=4, bankgroups=4, banks_per_group=4,
    rows=2**15, columns=32, command_bus="dual", default_mapping="ro-co-ba-bg-ch-co:4",
    org_source="DS 2.2 (Ramulator 2.1 HBM3): 32-bit PC, BL8 = 32 B, 4 BG x 4 banks per SID, "
               "1 KB row (32 columns of 32 B); one SID with 2^15 rows = 512 MiB per PC, "
               "16 GiB per 32-PC stack (JEDEC 16Gb 8-high has 2 SIDs x 2^14 rows)",
    timings=_specs(nRTW=TimingSpec("nRTW", "ns", doc="DS 2.2 gives tRTW 20 (12.5 ns)")),
    presets=(
        _preset(6.4, "DS 2.2: Ramulator 2.1 HBM3_6400Mbps ('Table 4 in JESD238'), tCK 0.625 "
                     "ns; nRFC 560 = 350 ns for an 8 Gb channel (16Gb_8hi)",
                nBL=2, nCL=20, nCWL=10, nRCD=31, nRCDW=15, nRP=26, nRAS=45, nRC=72, nRTP=9,
                nWR=33, nWTR_S=7, nWTR_L=10, nRRD_S=4, nRRD_L=5, nFAW=24, nCCD_S=2, nCCD_L=4,
                nRTW=20, nREFI=6240, nRFC=560),
    ),
    constraints=JEDEC_ROWS + DUAL_BUS_ROWS,
    energy=HBM3_ENERGY,
    notes="Stack IDs are not modelled (tCCD_R unused).",
)

GDDR6 = Standard(
    name="gddr6", pins_per_device=32, channels_per_device=2, default_rate_gbps=16.0,
    rate_range_gbps=(10.0, 24.0), default_device_bytes=2 * 2**30,
    source="GDDR6: 32 b per chip as 2 x16 channels, 14-16 Gb/s typical, up to 24; "
           "16 Gb (2 GB) chips (DS 'Bandwidth per device')",
    channel_width_bits=16, burst_length=16, bits_per_ck=8, bankgroups=4, banks_per_group=4,
    rows=2**14, columns=128, command_bus="single", default_mapping="ro-co-ba-bg-ch-co:4",
    org_source="DS 2.3, Ramulator 2.1 GDDR6_16Gb_x16: x16 channel, BL16 = 32 B, 4 BG x 4 banks, "
               "2^14 rows of 4 KB (2048 columns x 16 b = 128 bursts of 32 B): 1 GiB per channel",
    timings=_specs(nRTW=TimingSpec("nRTW", "expr", expr="nCL + 1",
                                   doc="Ramulator 2.1 GDDR6: RTW = CL + 1 turnaround cycle")),
    presets=(
        _preset(14.0, "DS 2.3: Ramulator 2.1 GDDR6_14000_1350mV_double (Samsung K4Z80325BC), "
                      "tCK 0.571 ns (8 bits per CK). Its tRC 79 is 1 cycle below tRAS + tRP = "
                      "80 (45.0 ns against 30.2 + 15.4); tilesim lifts it to 80",
                nBL=2, nCL=24, nCWL=6, nRCD=27, nRCDW=16, nRP=27, nRAS=53, nRC=79, nRTP=4,
                nWR=27, nWTR_S=9, nWTR_L=11, nRRD_S=8, nRRD_L=8, nFAW=29, nCCD_S=2, nCCD_L=4,
                nREFI=3333, nRFC=211),
    ),
    constraints=JEDEC_ROWS + SINGLE_BUS_ROWS,
    energy=GDDR6_ENERGY,
    notes="Default rate 16 Gb/s: the 14 Gb/s preset's ns timings re-rounded to tCK 0.5 ns.",
)

HBM2_DRAMSIM3 = Standard(
    name="hbm2_dramsim3", pins_per_device=1024, channels_per_device=8, default_rate_gbps=2.0,
    rate_range_gbps=(2.0, 2.0), default_device_bytes=8 * 2**30,
    source="DRAMsim3 configs/HBM2_8Gb_x128.ini (DS 2.1): HBM2 in legacy mode, 8 channels x "
           "128 b per stack at 2 Gb/s = 256 GB/s",
    channel_width_bits=128, burst_length=4, bits_per_ck=2, bankgroups=4, banks_per_group=4,
    rows=2**15, columns=32, command_bus="dual", default_mapping="ro-bg-ba-ch-co",
    org_source="DRAMsim3 HBM2_8Gb_x128: 128-bit legacy channel, BL4 = 64 B, 4 BG x 4 banks, "
               "32768 rows of 2 KB; address map rorabgbachco (one rank: ro-bg-ba-ch-co)",
    timings=_specs(nRTW=TimingSpec("nRTW", "expr", expr="nCL + nBL - nCWL + 1",
                                   doc="DRAMsim3 read_to_write: RL + burst - WL + tRTRS (1)")),
    presets=(
        _preset(2.0, "DRAMsim3 configs/HBM2_8Gb_x128.ini (DS 2.1): tRC = tRAS + tRP as DRAMsim3 "
                     "derives it; tRTP 5 because DRAMsim3 reads only tRTP (default 5), not the "
                     "file's tRTP_L/S",
                nBL=2, nCL=14, nCWL=4, nRCD=14, nRCDW=14, nRP=14, nRAS=34, nRC=48, nRTP=5,
                nWR=16, nWTR_S=6, nWTR_L=8, nRRD_S=4, nRRD_L=6, nFAW=30, nCCD_S=1, nCCD_L=2,
                nREFI=3900, nRFC=260),
    ),
    constraints=JEDEC_ROWS + DUAL_BUS_ROWS,
    energy=HBM2_ENERGY,
    notes="A comparison organisation, not a product: the one DRAMsim3 was measured with in DS "
          "'Reference runs'. Not a config standard (config.MEMORY_STANDARDS).",
)

STANDARDS: Mapping[str, Standard] = MappingProxyType(
    {s.name: s for s in (DDR3, HBM2, HBM2E, HBM3, GDDR6)})
"""The standards a chip config may name (config.MEMORY_STANDARDS lists the same; a test checks)."""

VARIANTS: Mapping[str, Standard] = MappingProxyType({s.name: s for s in (HBM2_DRAMSIM3,)})
"""Extra organisations for comparisons with other simulators (``tilesim dram --standard``)."""

ALL: Mapping[str, Standard] = MappingProxyType({**STANDARDS, **VARIANTS})
