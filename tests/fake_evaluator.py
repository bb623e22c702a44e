"""A fast, deterministic stand-in for ``tilesim.simulate`` (the contract of issue 6), used by the
sweep and compare tests until the real simulator lands.

``simulate(chip, model, phase, batch, context, *, all_layers, ignore_capacity, progress)``
returns an object whose ``summary()`` has the promised keys, from a roofline of the chip's
peak MAC rate and DRAM bandwidth, so directions are right (decode follows bandwidth, prefill
follows MACs) and every swept key changes something. It is not a model of anything.

Hooks for the tests, through the environment (so they reach Dask worker processes and
subprocesses too):

- ``TILESIM_FAKE_LOG``: a file; each call appends one line, the point's identity hash
  (:func:`ident`), so a test can tell which points were computed;
- ``TILESIM_FAKE_SLEEP``: seconds to sleep per call (to kill a sweep part way);
- ``TILESIM_FAKE_INTERRUPT_AT``: raise KeyboardInterrupt (as Ctrl-C would) in the call that
  finds this many lines in the log;
- ``TILESIM_FAKE_CRASH``: kill the calling process (as a segfault or the OOM killer would):
  ``once:FILE`` the first time (FILE marks that it happened), ``rows:N`` on every chip with
  N array rows; both may be given, separated by a comma.

A chip whose array has ``FAIL_ROWS`` rows raises a ProgramError: the failing point.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

FAIL_ROWS = 48


def ident(config_dict: dict, phase: str, batch: int, context: int) -> str:
    """Identity of one evaluation (full config dict + workload), as the tests compute it."""
    text = json.dumps({"config": config_dict, "phase": phase, "batch": batch,
                       "context": context}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class FakeResult:
    def __init__(self, summary: dict):
        self._summary = summary

    def summary(self) -> dict:
        return dict(self._summary)


def simulate(chip, model, phase, batch, context, *, all_layers=False, ignore_capacity=False,
             progress=None):
    from tilesim import config
    from tilesim.arch import dram
    from tilesim.errors import ProgramError
    from tilesim.programs.models import resolve_model

    if isinstance(chip, (str, Path)):
        chip = config.load(chip)
    if isinstance(model, (str, Path)):
        model = resolve_model(model)
    log = os.environ.get("TILESIM_FAKE_LOG")
    stop_at = int(os.environ.get("TILESIM_FAKE_INTERRUPT_AT", "0") or 0)
    if log and stop_at and os.path.exists(log):
        with open(log) as f:
            if sum(1 for _ in f) == stop_at:
                raise KeyboardInterrupt
    if log:
        line = ident(config.to_dict(chip, full=True), phase, batch, context) + "\n"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    for crash in filter(None, os.environ.get("TILESIM_FAKE_CRASH", "").split(",")):
        if crash.startswith("once:"):
            try:
                os.close(os.open(crash[5:], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(70)
        if crash == f"rows:{chip.cores.systolic.rows}":
            os._exit(70)
    delay = float(os.environ.get("TILESIM_FAKE_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)
    if chip.cores.systolic.rows == FAIL_ROWS:
        raise ProgramError(f"fake: no tiling for a {FAIL_ROWS}-row array (the failing point)")

    clock = chip.clock_ghz * 1e9
    macs = model.macs(phase, batch, context)
    peak_gbps = dram.peak_gbps(chip.memory) if chip.memory is not None else 0.0
    bw = (peak_gbps or 20_000.0) * 1e9
    kv = model.kv_cache_bytes(batch, context if phase == "decode" else 0)
    read = model.weight_bytes() + kv
    write = model.kv_cache_bytes(batch, context if phase == "prefill" else 1)
    # SRAM below 2 MiB per core and narrow links cost some efficiency
    sram_eff = min(1.0, 0.6 + 0.4 * chip.cores.sram.size_bytes / (2 * 2**20))
    noc_eff = min(1.0, 0.7 + 0.3 * chip.noc.link_width_bytes / 64)
    t_mac = macs / (chip.peak_macs_per_cycle * clock * sram_eff)
    t_mem = (read + write) / (0.85 * bw * noc_eff)
    seconds = max(t_mac, t_mem) + 2e-6
    cycles = int(round(seconds * clock))
    tokens = batch * (context if phase == "prefill" else 1)
    pj = {"mac": macs * 0.4, "sram": (read + write) * 1.2,
          "noc": (read + write) * 8 * 0.05 * 64 / chip.noc.link_width_bytes,
          "vector": tokens * model.d_model * 2.0,
          "dram": (read + write) * 8 * (6.0 if chip.memory and "hbm" in chip.memory.standard
                                        else 7.5),
          "static": seconds * 1e12 * (20 + chip.sram_total_bytes / 2**30 * 10)}
    total = sum(pj.values())
    gbps = (read + write) / seconds / 1e9
    s = {"cycles": cycles, "seconds": seconds, "tokens_per_s": tokens / seconds,
         "macs": macs, "model_macs": macs, "dram_read_bytes": read, "dram_write_bytes": write,
         "dram_gbps": gbps, "peak_dram_gbps": peak_gbps,
         "dram_pct_of_peak": 100 * gbps / peak_gbps if peak_gbps else 0.0,
         "energy_pj_per_token": total / tokens,
         "energy_pj_by_component": dict(pj),     # the whole step, as tilesim.simulate gives
         "config": chip.name, "model": model.name, "phase": phase, "batch": batch,
         "context": context}
    s["ttft_s" if phase == "prefill" else "tpot_s"] = seconds
    return FakeResult(s)
