"""``tilesim.simulate``: a chip and a transformer in, cycles, tokens/s and energy out.

One forward step (prefill of ``batch`` prompts of ``context`` tokens, or one decode token per
sequence after ``context`` cached ones) is compiled op by op (programs.codegen) and run cycle
by cycle (arch.chip). The step is cut into programs: the embedding, one per distinct layer shape
(graph.layer_groups: dense and MoE layers), and the head (final norm and LM head). Layers of the
same shape compile to the same program up to addresses, so each distinct one is simulated once
and counted for every layer of its shape; ``all_layers=True`` simulates every layer, at its own
KV-cache and weight addresses. Programs run one after another, each from an idle chip (no
overlap between the end of one layer and the start of the next: a small, stated pessimism).
Being independent, they are simulated in parallel, one forked process per CPU (``workers``);
the numbers do not depend on how many.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from tilesim import config as config_mod
from tilesim.errors import InputError
from tilesim.report.progress import ProgressBar

PHASES = ("prefill", "decode")


@dataclass
class Part:
    """One simulated program and how many times it counts."""

    label: str              # "embed", "layers 0-31", "head"
    times: int
    stats: object           # arch.chip.RunStats
    program: object         # isa.Program that ran
    ops: list               # op names
    tags: np.ndarray        # op index per instruction
    kinds: dict             # op name -> kind


@dataclass
class Result:
    chip: object
    spec: object
    phase: str
    batch: int
    context: int
    parts: list = field(default_factory=list)
    wall_s: float = 0.0

    # ---- totals -------------------------------------------------------------------------
    def _sum(self, get) -> float:
        return sum(get(p.stats) * p.times for p in self.parts)

    @property
    def cycles(self) -> int:
        return int(self._sum(lambda s: s.cycles))

    @property
    def seconds(self) -> float:
        return self.cycles / (self.chip.clock_ghz * 1e9)

    @property
    def tokens(self) -> int:
        """Tokens this step processes (prefill: every prompt token; decode: one per sequence)."""
        return self.batch * self.context if self.phase == "prefill" else self.batch

    def energy_by_component(self) -> dict:
        out: dict[str, float] = {}
        for p in self.parts:
            for k, v in p.stats.energy_pj.items():
                out[k] = out.get(k, 0.0) + v * p.times
        return out

    def op_table(self) -> list[dict]:
        """Per op of the step: cycles (span of its instructions, x layers), MACs, DRAM bytes."""
        from tilesim.arch import chip, dma
        from tilesim.isa.opcodes import Op
        rows: dict[str, dict] = {}
        for p in self.parts:
            prog_ins = p.program.instrs
            nbytes = dma.descriptor_bytes(prog_ins, chip._BITS)
            mm = prog_ins["op"] == Op.MM
            macs = np.where(mm, prog_ins["m"].astype(np.int64) * prog_ins["k"] * prog_ins["n"], 0)
            for j, name in enumerate(p.ops):
                sel = p.tags == j
                if not sel.any():
                    continue
                span = int(p.stats.t_end[sel].max() - p.stats.t_start[sel].min())
                key = _generic(name)
                r = rows.setdefault(key, {"op": key, "kind": p.kinds.get(name, "?"),
                                          "cycles": 0, "macs": 0, "dram_bytes": 0})
                r["cycles"] += span * p.times
                r["macs"] += int(macs[sel].sum()) * p.times
                ld = sel & np.isin(prog_ins["op"], (Op.LOAD, Op.STORE))
                r["dram_bytes"] += int(nbytes[ld].sum()) * p.times
        return sorted(rows.values(), key=lambda r: -r["cycles"])

    def summary(self) -> dict:
        s = self.seconds
        e = self.energy_by_component()
        total_e = sum(e.values())
        rd = int(self._sum(lambda st: st.dram_read_bytes))
        wr = int(self._sum(lambda st: st.dram_write_bytes))
        peak = self.parts[0].stats.dram.get("peak_gbps", 0.0) if self.parts else 0.0
        gbps = (rd + wr) / s / 1e9 if s else 0.0
        macs = int(self._sum(lambda st: sum(st.macs.values())))
        busy = sum(p.stats.engine_busy.sum(axis=0) * p.times for p in self.parts)
        n_e = self.parts[0].stats.engine_busy.shape[1] if self.parts else 0
        cores = self.chip.cores.count
        names = ["matrix", "vector"] + [f"dma{i}" for i in range(max(0, n_e - 2))]
        out = {
            "config": self.chip.name, "model": self.spec.name, "phase": self.phase,
            "batch": self.batch, "context": self.context,
            "cycles": self.cycles, "seconds": s,
            "tokens_per_s": self.tokens / s if s else 0.0,
            "macs": macs, "model_macs": self.spec.macs(self.phase, self.batch, self.context),
            "dram_read_bytes": rd, "dram_write_bytes": wr,
            "dram_gbps": gbps, "peak_dram_gbps": peak,
            "dram_pct_of_peak": 100.0 * gbps / peak if peak else 0.0,
            "mac_utilisation_pct": 100.0 * macs / (self.chip.peak_macs_per_cycle * self.cycles)
            if self.cycles else 0.0,
            "engine_utilisation_pct": {names[i]: 100.0 * float(busy[i]) / (cores * self.cycles)
                                       for i in range(n_e)} if self.cycles else {},
            "energy_pj": total_e,
            "energy_pj_per_token": total_e / self.tokens,
            "energy_pj_by_component": e,
            "simulated_programs": [{"label": p.label, "times": p.times, "cycles": p.stats.cycles,
                                    "instructions": p.stats.instructions} for p in self.parts],
            "wall_seconds": self.wall_s,
        }
        if self.phase == "prefill":
            out["ttft_s"] = s
        else:
            out["tpot_s"] = s
        return out


def _generic(op: str) -> str:
    """``layer7.q`` -> ``layer*.q`` (ops of reused layers are reported per shape)."""
    head, _, rest = op.partition(".")
    if head.startswith("layer") and head[5:].isdigit():
        return "layer*." + rest
    return op


def check_capacity(cfg, spec, phase: str, batch: int, context: int) -> None:
    """InputError when weights and KV cache do not fit the chip's off-chip memory."""
    if cfg.memory is None:
        raise InputError(f"{cfg.name}: the compiler keeps weights and the KV cache in off-chip "
                         "memory, and this chip has none (memory: none)")
    from tilesim.arch import dram
    cap = dram.capacity_bytes(cfg.memory)
    tokens = context if phase == "prefill" else context + 1
    need = spec.weight_bytes() + spec.kv_cache_bytes(batch, tokens)
    if need > cap:
        raise InputError(
            f"{spec.name} ({phase}, batch {batch}, context {context}) needs "
            f"{need / 2**30:.2f} GiB of memory for weights and KV cache; {cfg.name} has "
            f"{cap / 2**30:.2f} GiB (memory.capacity_bytes); --ignore-capacity runs it anyway")


def simulate(chip, model, phase: str = "decode", batch: int = 1, context: int = 1024, *,
             all_layers: bool = False, ignore_capacity: bool = False, progress=None,
             weight_dtype: str | None = None, validate: bool = False,
             workers: int | None = None) -> Result:
    """Simulate one forward step of ``model`` on ``chip``; see the module docstring.

    chip: ChipConfig, preset name or YAML path. model: ModelSpec, preset name or config.json.
    progress: None (a bar on stderr when it is a terminal), False (silent) or a callable
    ``progress(done, total, label)`` called after each program, in the order they finish (from
    a helper thread, one call at a time, when several processes run them).
    workers: processes to run the programs in (default: one per CPU, see ``_workers``); the
    results are the same for any number."""
    from tilesim.programs import graph, models

    t0 = time.perf_counter()
    cfg = chip if isinstance(chip, config_mod.ChipConfig) else config_mod.load(chip)
    spec = model if isinstance(model, models.ModelSpec) else models.resolve_model(
        model, **({"weight_dtype": weight_dtype} if weight_dtype else {}))
    if phase not in PHASES:
        raise InputError(f"phase {phase!r}: allowed: prefill, decode")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch {batch!r}: allowed: an integer >= 1")
    if not isinstance(context, int) or context < (1 if phase == "prefill" else 0):
        raise InputError(f"context {context!r}: allowed: an integer >= 1 (prefill) or >= 0")
    models.check_context(spec, context if phase == "prefill" else context + 1, phase)
    if not ignore_capacity:
        check_capacity(cfg, spec, phase, batch, context)

    g = graph.model_graph(spec, phase, batch, context)
    nodes = [g.nodes[n] for n in g.nodes]
    by_layer: dict[int, list] = {}
    for nd in nodes:
        by_layer.setdefault(nd["layer"], []).append(nd)
    plan: list[tuple[str, list, int]] = [("embed", by_layer[-1][:1], 1)]
    if all_layers:
        plan += [(f"layer {L}", by_layer[L], 1) for L in range(spec.n_layers)]
    else:
        for sig, layers in graph.layer_groups(spec).items():
            label = f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
            plan.append((f"{label} ({sig})", by_layer[layers[0]], len(layers)))
    plan.append(("head", by_layer[-1][1:], 1))

    res = Result(cfg, spec, phase, batch, context)
    bar = None if callable(progress) else ProgressBar(
        len(plan), "simulate", enabled=False if progress is False else None)
    jobs = [(spec, nds, cfg, phase, batch, context, label, validate) for label, nds, _ in plan]
    done: dict[int, tuple] = {}
    lock = threading.Lock()

    def finished(i: int, comp, stats) -> None:
        with lock:
            done[i] = (comp, stats)
            if bar is None:
                progress(len(done), len(plan), plan[i][0])
            else:
                bar.label = f"simulate {plan[i][0]}"
                bar.update()

    _run_parts(jobs, _workers(workers, len(plan)), finished)
    if bar is not None:
        bar.close()
    for i, (label, nds, times) in enumerate(plan):
        comp, stats = done[i]
        res.parts.append(Part(label, times, stats, comp.program, comp.ops, comp.tags,
                              {nd["name"]: nd["kind"] for nd in nds}))
    res.wall_s = time.perf_counter() - t0
    return res


def _workers(workers: int | None, parts: int) -> int:
    """Processes to simulate ``parts`` programs with: ``workers``, or by default one per CPU
    this process may use, but one (in this process) when called from a thread other than the
    main one or from a daemon process (a Dask or multiprocessing worker: its pool already
    fills the machine); always one where fork is unavailable."""
    if workers is not None:
        if not isinstance(workers, int) or workers < 1:
            raise InputError(f"workers {workers!r}: allowed: an integer >= 1")
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if workers is not None:
        return min(workers, parts)
    if (threading.current_thread() is not threading.main_thread()
            or multiprocessing.current_process().daemon):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, parts))


def _run_part(job):
    """Compile and run one program: (CompiledProgram, RunStats)."""
    from tilesim.arch import chip as chip_mod
    from tilesim.programs import codegen
    spec, nds, cfg, phase, batch, context, label, validate = job
    comp = codegen.compile_nodes(spec, nds, cfg, phase, batch, context, name=label)
    return comp, chip_mod.run(comp.program, cfg, validate=validate)


_JOBS: list = []   # the jobs of the running _run_parts, which forked workers inherit


def _worker(order: list, taken, results, spool: str) -> None:
    """A forked worker: take the next job of ``order`` (shared counter ``taken``) until none is
    left; put (index, pickle path, None) or (index, None, error) on ``results``. A program's
    result is ~100 MB: a file on tmpfs takes a tenth of the time of a pipe."""
    while True:
        with taken.get_lock():
            k = taken.value
            taken.value += 1
        if k >= len(order):
            return
        i = order[k]
        try:
            path = os.path.join(spool, f"part{i}.pickle")
            with open(path, "wb") as f:
                pickle.dump(_run_part(_JOBS[i]), f, protocol=pickle.HIGHEST_PROTOCOL)
            results.put((i, path, None))
        except BaseException as e:       # noqa: BLE001 - handed to the parent as it is
            try:
                pickle.dumps(e)
            except Exception:             # noqa: BLE001 - an error that does not pickle
                e = RuntimeError(f"{e.__class__.__name__}: {e}")
            results.put((i, None, e))
            return


def _run_parts(jobs: list, workers: int, finished) -> None:
    """Run every job, calling ``finished(index, compiled, stats)`` as each ends (one call at a
    time). With ``workers`` > 1, this process and ``workers - 1`` forked ones take jobs from one
    list, costliest first (``_cost``; this process takes the first, whose result then need not
    travel), and a thread here collects the workers' results (the event loop releases the
    GIL, so progress shows while this process simulates). Each job is a separate,
    deterministic simulation of an idle chip: the results do not depend on the split. An
    error in any job (or a worker that dies) stops the others and is raised here."""
    if workers <= 1:
        for i, job in enumerate(jobs):
            finished(i, *_run_part(job))
        return
    ctx = multiprocessing.get_context("fork")
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i][1]))
    taken = ctx.Value("q", 1)         # this process takes the costliest job, order[0]
    results = ctx.Queue()
    stop = threading.Event()
    failed: list = []
    left = [len(jobs)]
    lock = threading.Lock()

    def done(i, comp, stats) -> None:
        finished(i, comp, stats)
        with lock:
            left[0] -= 1
            if left[0] == 0:
                stop.set()

    def collect(procs) -> None:
        while not stop.is_set():
            try:
                i, path, err = results.get(timeout=0.1)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    failed.append(RuntimeError(f"a simulation worker died (exit code "
                                               f"{dead[0]}); try --workers 1"))
                    stop.set()
                continue
            try:
                if err is not None:
                    raise err
                with open(path, "rb") as f:
                    comp, stats = pickle.load(f)
                os.remove(path)
                done(i, comp, stats)
            except BaseException as e:   # noqa: BLE001 - re-raised in the caller's thread
                failed.append(e)
                stop.set()

    _JOBS[:] = jobs       # configs hold mapping proxies, which do not pickle: fork shares them
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    procs: list = []
    collector = None
    try:
        with tempfile.TemporaryDirectory(prefix="tilesim-", dir=shm) as spool:
            procs = [ctx.Process(target=_worker, args=(order, taken, results, spool),
                                 daemon=True) for _ in range(workers - 1)]
            for p in procs:
                p.start()
            collector = threading.Thread(target=collect, args=(procs,), daemon=True)
            collector.start()
            k = 0
            while k < len(order) and not stop.is_set():
                done(order[k], *_run_part(jobs[order[k]]))
                with taken.get_lock():
                    k = taken.value
                    taken.value += 1
            collector.join()
            if failed:
                raise failed[0]
    finally:
        stop.set()
        if collector is not None:
            collector.join()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        _JOBS.clear()


def _cost(nds: list) -> float:
    """A rough simulation cost of a program's ops (bytes moved plus MACs / 256), for ordering."""
    return float(sum(nd["bytes_min"] + nd["in_bytes"] + nd["out_bytes"] + nd["macs"] / 256
                     for nd in nds))
