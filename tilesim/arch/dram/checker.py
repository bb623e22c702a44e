"""Replay an issued DRAM command trace and prove no timing or state rule was broken (tests only).

Independent of the compiled arrays on purpose: the table is rebuilt here from the standard's
constraint rows and the *named* timings, with this module's own evaluator, so a bug in
``compile.py`` or in the numba controller shows up as a violation. Plain Python, slow
(a few hundred thousand commands per second): for tests, not for runs.

Checks, per channel, in issue order:

- every constraint row ``(level, before, after, latency, window)``: an ``after`` command at a
  level instance (same channel / bank group / bank) comes at least ``latency`` cycles after
  the ``window``-th most recent ``before`` command there. REF is channel-wide: it counts at,
  and is checked against, every bank group and bank of its channel;
- bank state: ACT only to a closed bank, RD/WR only to the open row, PRE only to an open bank,
  REF only with every bank closed; columns inside the row;
- refresh cadence: consecutive REFs of a channel at most nREFI + slack apart, the first by
  nREFI + slack, where slack (nRC + nCWL + nBL + nWR + nRP + banks) bounds how long closing
  the banks can take. The controller never postpones refresh.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from tilesim.arch.dram.standards import COMMANDS, Standard


@dataclass(frozen=True)
class Violation:
    index: int          # position in the trace
    cycle: int
    channel: int
    command: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return (f"trace[{self.index}] cycle {self.cycle} ch {self.channel} {self.command}: "
                f"{self.rule} ({self.detail})")


def _evaluate(expr: str, timings) -> int:
    """The checker's own evaluator: Python arithmetic with only the timings and max/min."""
    value = eval(expr, {"__builtins__": {}, "max": max, "min": min}, dict(timings))  # noqa: S307
    if not isinstance(value, int):
        raise ValueError(f"{expr!r} is not an integer expression")
    return value


def constraint_table(std: Standard, timings) -> list[tuple]:
    """(level, before set, after set, cycles, window, why) for every row of the standard."""
    return [(r.level, frozenset(r.before), frozenset(r.after), _evaluate(r.latency, timings),
             r.window, r.why or f"{r.before}->{r.after} {r.latency}") for r in std.constraints]


def check_trace(std: Standard, timings, trace: dict, *, limit: int = 20) -> list[Violation]:
    """Violations in ``trace`` (dict of arrays: cycle, channel, bankgroup, bank, row, column,
    command), at most ``limit`` of them; an empty list proves the trace legal."""
    table = constraint_table(std, timings)
    n = len(trace["cycle"])
    order = np.lexsort((np.arange(n), trace["cycle"], trace["channel"]))
    out: list[Violation] = []
    last: dict = defaultdict(lambda: defaultdict(lambda: deque(maxlen=8)))
    open_row: dict = {}
    refs: dict = defaultdict(list)
    slack = (timings["nRC"] + timings["nCWL"] + timings["nBL"] + timings["nWR"]
             + timings["nRP"] + std.banks)
    groups = [(g, b) for g in range(std.bankgroups) for b in range(std.banks_per_group)]

    def add(i, t, ch, cmd, rule, detail):
        if len(out) < limit:
            out.append(Violation(int(i), int(t), int(ch), cmd, rule, detail))

    def keys(level, ch, g, b, cmd):
        """Level instances a command belongs to (all of them for a channel-wide REF)."""
        if level == "channel":
            return [(ch,)]
        if cmd == "REF":
            if level == "bankgroup":
                return [(ch, gg) for gg in range(std.bankgroups)]
            return [(ch, gg, bb) for gg, bb in groups]
        return [(ch, g)] if level == "bankgroup" else [(ch, g, b)]

    for i in order:
        t = int(trace["cycle"][i])
        ch = int(trace["channel"][i])
        g = int(trace["bankgroup"][i])
        b = int(trace["bank"][i])
        row = int(trace["row"][i])
        col = int(trace["column"][i])
        cmd = COMMANDS[int(trace["command"][i])]
        # timing rows
        for level, before, after, lat, window, why in table:
            if cmd not in after:
                continue
            for key in keys(level, ch, g, b, cmd):
                for prev_cmd in before:
                    hist = last[key][prev_cmd]
                    if len(hist) >= window:
                        t0 = hist[-window]
                        if t - t0 < lat:
                            add(i, t, ch, cmd, why,
                                f"{prev_cmd} at {t0} at {level} {key}: {t - t0} < {lat}")
        # bank state
        if cmd == "REF":
            opened = [k for k in open_row if k[0] == ch]
            if opened:
                add(i, t, ch, cmd, "REF with banks open", f"{opened[:4]}")
            refs[ch].append(t)
        else:
            bank = (ch, g, b)
            if not (0 <= g < std.bankgroups and 0 <= b < std.banks_per_group):
                add(i, t, ch, cmd, "no such bank", f"bank group {g}, bank {b}")
            if cmd == "ACT":
                if bank in open_row:
                    add(i, t, ch, cmd, "ACT to an open bank", f"row {open_row[bank]} open")
                open_row[bank] = row
            elif cmd == "PRE":
                if bank not in open_row:
                    add(i, t, ch, cmd, "PRE to a closed bank", f"bank {bank}")
                open_row.pop(bank, None)
            else:
                if open_row.get(bank) != row:
                    add(i, t, ch, cmd, f"{cmd} to a row that is not open",
                        f"row {row}, open: {open_row.get(bank)}")
                if not 0 <= col < std.columns:
                    add(i, t, ch, cmd, "column outside the row", f"column {col}")
        # record
        for level in ("channel", "bankgroup", "bank"):
            for key in keys(level, ch, g, b, cmd):
                last[key][cmd].append(t)
    end = int(trace["cycle"].max()) if n else 0
    nrefi = timings["nREFI"]
    for ch in sorted(set(int(c) for c in trace["channel"])):
        times = [0] + refs[ch]
        gaps = np.diff(times)
        for k, gap in enumerate(gaps):
            if gap > nrefi + slack:
                add(-1, times[k + 1], ch, "REF", "refresh too late",
                    f"{gap} cycles after the previous one (> nREFI {nrefi} + {slack})")
        if end - times[-1] > nrefi + slack:
            add(-1, end, ch, "REF", "refresh missing",
                f"none in the last {end - times[-1]} cycles (> nREFI {nrefi} + {slack})")
    return out
