"""``tilesim.simulate``: a chip and a transformer in, cycles, tokens/s and energy out.

One forward step (prefill of ``batch`` prompts of ``context`` tokens, or one decode token per
sequence after ``context`` cached ones) is compiled op by op (programs.codegen) and run cycle
by cycle (arch.chip). The step is cut into programs: the embedding, one per distinct layer shape
(graph.layer_groups: dense and MoE layers), and the head (final norm and LM head). Layers of the
same shape compile to the same program up to addresses, so each distinct one is simulated once
and counted for every layer of its shape; ``all_layers=True`` simulates every layer, at its own
KV-cache and weight addresses. Programs run one after another, each from an idle chip (no
overlap between the end of one layer and the start of the next: a small, stated pessimism).
Within a program every op ends in a chip-wide barrier, so each op is run as a program of its
own from an idle chip too (only the DRAM's open rows and refresh phase do not carry over from
op to op: a llama-3-8b decode layer comes out 0.05% faster than run whole). Being independent,
the ops are simulated in parallel, one forked process per CPU (``workers``); the numbers do not
depend on how many.

A large LM head is one op that no other can run beside, so it would set the wall time alone
(llama-3-8b's 1 GB head: 92.5 M events, 16 s of event loop on this 2-core EPYC, while its
reused layer's ops take 6-9 s). By the layer rule it is cut into ``head_slices`` equal vocab slices, each a whole
number of array-width column strips and at least HEAD_SLICE_MIN_BYTES of weights, run one
after another from an idle chip like any op; they are the same program up to addresses, so
one is simulated and counted for all. The price is each extra slice's ramp and tail
(llama-3-8b decode on h100-like-hbm3, measured 2026-12-03: 3 slices of 232,935 cycles against
675,908 for the whole head, +3.4% on the head and +0.21% on the step, 10,746,144 cycles
against 10,723,247; the default run's wall time 17.1 -> 10.9 s, and 8.2 s once a CPU freed by
the head's worker takes layer ops, see _run_parts). ``all_layers=True`` runs the head whole.
Prefill matmuls are not cut this way: in 4 row slices of 512 rows (each a whole number of the
plan's row passes, the same traffic), llama-3-8b's prefill-2048 down took 4 x 242,798 =
971,192 cycles against 796,207 whole (+22%) and qkv 490,512 against 369,372 (+33%): run
whole, an op overlaps one pass's first loads with the previous pass's last products, and a
slice boundary stops that (measured 2026-12-03).
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from tilesim import config as config_mod
from tilesim.errors import InputError
from tilesim.report.progress import ProgressBar

PHASES = ("prefill", "decode")

HEAD_SLICE_MIN_BYTES = 256 << 20
"""The least weight bytes of an LM head slice (module doc): a head under twice this is run
whole; llama-3-8b's (1,002 MiB of bf16) is run as 3 slices."""


@dataclass
class Part:
    """One simulated program and how many times it counts."""

    label: str              # "embed", "layers 0-31", "head" (or "final norm" and
                            # "lm_head (vocab slice 1 of 3)": head_slices)
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
    routing: str = "random"     # MoE tokens over experts (graph.ROUTINGS)
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
                r = rows.setdefault(key, {"op": key, "kind": _kind(p.kinds, name),
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
            "weight_dtype": self.spec.weight_dtype, "act_dtype": self.spec.act_dtype,
            "kv_dtype": self.spec.kv_dtype,
            "moe_routing": self.routing if self.spec.n_experts else None,
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
            # chip-wide static power the energy table gives (W); 0 means static is not modelled
            "static_power_w": (self.parts[0].stats.energy_table.get("static_mw_per_core", 0.0)
                               * cores / 1e3) if self.parts else 0.0,
            "simulated_programs": [{"label": p.label, "times": p.times, "cycles": p.stats.cycles,
                                    "instructions": p.stats.instructions} for p in self.parts],
            "wall_seconds": self.wall_s,
        }
        if self.phase == "prefill":
            out["ttft_s"] = s
        else:
            out["tpot_s"] = s
        return out


def _kind(kinds: dict, op: str) -> str:
    """The graph kind of op ``op``, or of the node it is a part of (``layer3.experts.routed1.up``
    is one of the ops the node ``layer3.experts`` compiles to)."""
    while op not in kinds and "." in op:
        op = op.rpartition(".")[0]
    return kinds.get(op, "?")


def _generic(op: str) -> str:
    """``layer7.q`` -> ``layer*.q`` (ops of reused layers are reported per shape)."""
    head, _, rest = op.partition(".")
    if head.startswith("layer") and head[5:].isdigit():
        return "layer*." + rest
    return op


def check_capacity(cfg, spec, phase: str, batch: int, context: int,
                   ignore: bool = False) -> None:
    """InputError when weights and KV cache do not fit the chip's off-chip memory; with
    ``ignore`` (--ignore-capacity, which simulates one layer's program at a time), only when
    one layer's KV cache alone does not fit (codegen.compile_nodes checks each program's whole
    DRAM image once it is laid out)."""
    if cfg.memory is None:
        raise InputError(f"{cfg.name}: the compiler keeps weights and the KV cache in off-chip "
                         "memory, and this chip has none (memory: none)")
    from tilesim.arch import dram
    cap = dram.capacity_bytes(cfg.memory)
    tokens = context if phase == "prefill" else context + 1
    kv = spec.kv_cache_bytes(batch, tokens)
    need = spec.weight_bytes() + kv
    what = f"{spec.name} ({phase}, batch {batch}, context {context})"
    if need > cap and not ignore:
        raise InputError(
            f"{what} needs {need / 2**30:.2f} GiB of memory for weights and KV cache; "
            f"{cfg.name} has {cap / 2**30:.2f} GiB (memory.capacity_bytes); --ignore-capacity "
            "runs it anyway")
    if kv // spec.n_layers > cap:
        raise InputError(
            f"{what}: one layer's KV cache alone needs {kv / spec.n_layers / 2**30:.2f} GiB; "
            f"{cfg.name} has {cap / 2**30:.2f} GiB (memory.capacity_bytes), and even "
            "--ignore-capacity simulates a layer's weights and cache in it: lower the batch or "
            "the context, or raise memory.capacity_bytes in a copy of the chip file")


def simulate(chip, model, phase: str = "decode", batch: int = 1, context: int = 1024, *,
             all_layers: bool = False, ignore_capacity: bool = False, progress=None,
             weight_dtype: str | None = None, kv_dtype: str | None = None,
             routing: str = "random", validate: bool = False,
             workers: int | None = None) -> Result:
    """Simulate one forward step of ``model`` on ``chip``; see the module docstring.

    chip: ChipConfig, preset name or YAML path. model: ModelSpec, preset name or config.json.
    progress: None (a bar on stderr when it is a terminal), False (silent) or a callable
    ``progress(done, total, label)`` called after each program, in the order they finish (from
    a helper thread, one call at a time, when several processes run them).
    workers: processes to run the ops in (default: one per CPU, see ``_workers``); the
    results are the same for any number. weight_dtype, kv_dtype: the model's weights and KV
    cache in these types instead (MODEL_DTYPES; a preset's are bf16). routing: how MoE
    tokens spread over the experts (graph.ROUTINGS)."""
    from tilesim.programs import graph, models

    t0 = time.perf_counter()
    cfg = chip if isinstance(chip, config_mod.ChipConfig) else config_mod.load(chip)
    dtypes = {k: v for k, v in (("weight_dtype", weight_dtype), ("kv_dtype", kv_dtype)) if v}
    if isinstance(model, models.ModelSpec):
        spec = dataclasses.replace(model, **dtypes) if dtypes else model
    else:
        spec = models.resolve_model(model, **dtypes)
    if phase not in PHASES:
        raise InputError(f"phase {phase!r}: allowed: prefill, decode")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch {batch!r}: allowed: an integer >= 1")
    if not isinstance(context, int) or context < (1 if phase == "prefill" else 0):
        raise InputError(f"context {context!r}: allowed: an integer >= 1 (prefill) or >= 0")
    models.check_context(spec, context if phase == "prefill" else context + 1, phase)
    check_capacity(cfg, spec, phase, batch, context, ignore=ignore_capacity)

    g = graph.model_graph(spec, phase, batch, context, routing)
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
    slices = 1 if all_layers else head_slices(spec, cfg)
    if slices == 1:
        plan.append(("head", by_layer[-1][1:], 1))
    else:
        plan.append(("final norm", by_layer[-1][1:2], 1))
        plan.append((f"lm_head (vocab slice 1 of {slices})",
                     [graph.lm_head_slice(spec, phase, batch, context, slices)], slices))

    res = Result(cfg, spec, phase, batch, context, routing)
    # the bar counts ops (each runs as a program of its own); a program's op count is known
    # once it is compiled, so its graph nodes stand in until then
    bar = None if callable(progress) else ProgressBar(
        sum(len(nds) for _, nds, _ in plan), "simulate",
        enabled=False if progress is False else None)
    jobs = [(spec, nds, cfg, phase, batch, context, label, validate) for label, nds, _ in plan]
    done: dict[int, tuple] = {}
    lock = threading.Lock()

    def finished(i: int, comp, stats) -> None:
        with lock:
            done[i] = (comp, stats)
            if bar is None:
                progress(len(done), len(plan), plan[i][0])

    def compiled(i: int, n_ops: int) -> None:
        if bar is not None:
            bar.total += n_ops - len(plan[i][1])

    def op_done(i: int, j: int) -> None:
        if bar is not None:
            bar.label = f"simulate {plan[i][0]}"
            bar.update()

    _run_parts(jobs, _workers(workers), finished, compiled, op_done)
    if bar is not None:
        bar.close()
    for i, (label, nds, times) in enumerate(plan):
        comp, stats = done[i]
        kinds = {nd["name"]: nd["kind"] for nd in nds}
        kinds.update({op: kinds[names[0]] for op, names in comp.fused.items()})
        res.parts.append(Part(label, times, stats, comp.program, comp.ops, comp.tags, kinds))
    res.wall_s = time.perf_counter() - t0
    return res


def head_slices(spec, cfg) -> int:
    """How many equal vocab slices ``simulate`` runs the LM head as, one simulated and counted
    for all (module doc): the most that leave each slice a whole number of array-width column
    strips (``cores.systolic.cols``) and at least HEAD_SLICE_MIN_BYTES of weights; 1 (whole)
    when none does."""
    from tilesim.programs.mapping import nbytes
    cols = cfg.cores.systolic.cols
    most = nbytes(spec.vocab_size * spec.d_model, spec.weight_dtype) // HEAD_SLICE_MIN_BYTES
    return max([s for s in range(2, most + 1) if spec.vocab_size % (s * cols) == 0],
               default=1)


def _workers(workers: int | None) -> int:
    """Processes to simulate a step's ops with: ``workers``, or by default one per CPU
    this process may use, but one (in this process) when called from a thread other than the
    main one or from a daemon process (a Dask or multiprocessing worker: its pool already
    fills the machine); always one where fork is unavailable."""
    if workers is not None:
        if not isinstance(workers, int) or workers < 1:
            raise InputError(f"workers {workers!r}: allowed: an integer >= 1")
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if workers is not None:
        return workers
    if (threading.current_thread() is not threading.main_thread()
            or multiprocessing.current_process().daemon):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus or 1)


def _compile_part(job):
    """Compile one program and cut it into its ops: (Compiled, [(Program, index)]).
    ``validate`` checks the whole program here (its segments then run unchecked)."""
    from tilesim.programs import codegen
    spec, nds, cfg, phase, batch, context, label, validate = job
    comp = codegen.compile_nodes(spec, nds, cfg, phase, batch, context, name=label)
    if validate:
        from tilesim.isa.validate import validate as static_check
        static_check(comp.program, cfg)
    return comp, comp.program.split(comp.tags)


def _run_segment(seg):
    """Run one op's program (part, op, Program, cfg) on an idle chip: its RunStats."""
    from tilesim.arch import chip as chip_mod
    return chip_mod.run(seg[2], seg[3], validate=False)


_JOBS: list = []   # the programs of the running _run_parts, and the ops compiled so far in
_SEGS: list = []   # this process, (part, op, Program, cfg): forked workers inherit both
_MAX_OPS = 1 << 20     # a claim byte per op, shared by the processes (a step has far fewer ops)


def _claim(order: list, pos: list, lock, claimed) -> int:
    """The first op of ``order`` (costliest first) no process has claimed, now claimed by
    this one; -1 when none is left. ``pos[0]`` walks ``order`` (claims are never undone)."""
    with lock:
        while pos[0] < len(order) and claimed[order[pos[0]]]:
            pos[0] += 1
        if pos[0] == len(order):
            return -1
        k = order[pos[0]]
        claimed[k] = 1
        return k


def _by_cost(ks) -> list:
    """Ops of ``_SEGS`` (indices), costliest (most instructions) first."""
    return sorted(ks, key=lambda k: -len(_SEGS[k][2].instrs))


def _send(results, spool: str, kind: str, key: int, make) -> bool:
    """Put (kind, key, pickle path, None) on ``results``, the pickle holding ``make()``; or
    (kind, key, None, error) when it fails (then False). A result is up to ~100 MB: a file on
    tmpfs takes a tenth of the time of a pipe."""
    try:
        path = os.path.join(spool, f"{kind}{key}.pickle")
        with open(path, "wb") as f:
            pickle.dump(make(), f, protocol=pickle.HIGHEST_PROTOCOL)
        results.put((kind, key, path, None))
        return True
    except BaseException as e:       # noqa: BLE001 - handed to the parent as it is
        try:
            pickle.dumps(e)
        except Exception:             # noqa: BLE001 - an error that does not pickle
            e = RuntimeError(f"{e.__class__.__name__}: {e}")
        results.put((kind, key, None, e))
        return False


def _part_worker(order: list, taken, results, spool: str) -> None:
    """A worker forked at the start: take the next program of ``order`` (shared counter
    ``taken``), compile it and run its ops one after another, until none is left."""
    from tilesim.arch import chip as chip_mod

    def part(i):
        comp, segs = _compile_part(_JOBS[i])
        results.put(("compiled", i, len(segs), None))
        runs = []
        for j, (prog, idx) in enumerate(segs):
            runs.append((_run_segment((i, j, prog, _JOBS[i][2])), idx))
            results.put(("tick", i, j, None))
        return comp, chip_mod.join_runs(comp.program, runs)

    while True:
        with taken.get_lock():
            k = taken.value
            taken.value += 1
        if k >= len(order) or not _send(results, spool, "part", order[k],
                                        lambda: part(order[k])):
            return


def _op_worker(known: list, lock, claimed, results, spool: str) -> None:
    """A helper forked once this process has compiled a program: run the costliest unclaimed
    of its ops (``known``, indices into ``_SEGS``) until none is left."""
    order, pos = _by_cost(known), [0]
    while (k := _claim(order, pos, lock, claimed)) >= 0:
        if not _send(results, spool, "op", k, lambda: _run_segment(_SEGS[k])):
            return


def _run_parts(jobs: list, workers: int, finished, compiled=None, op_done=None) -> None:
    """Compile every job and run it op by op, calling ``compiled(index, ops)`` when a program
    is compiled, ``op_done(index, op)`` after each op and ``finished(index, compiled, stats)``
    as each program's last op ends (``stats`` joins its ops' runs, see arch.chip.join_runs);
    one call at a time.

    Each op runs as a program of its own on an idle chip (``Program.split``; the module
    docstring says what that leaves out), so the results do not depend on ``workers``.

    With ``workers`` > 1, this process and ``workers - 1`` forked ones take programs from one
    list, costliest first (``_cost``; this process takes the first). A worker compiles its
    program and runs its ops. This process compiles its program, then forks helpers for the
    CPUs no worker uses, and later for each CPU a worker frees when it runs out of programs,
    and runs the ops with them, costliest (most instructions) first: a layer no longer runs
    on one CPU while the other is idle. A thread collects the results (the event loop
    releases the GIL, so progress shows). An error anywhere, or a worker that dies, stops the
    others and is raised here."""
    from tilesim.arch import chip as chip_mod
    comps: dict = {}
    runs: dict = {}
    lock = threading.Lock()
    over: list = []

    def finish(i, comp, stats) -> None:
        finished(i, comp, stats)
        over.append(i)

    def record(k: int, stats) -> None:
        """Op ``k`` of _SEGS ran in this process or a helper."""
        i, j = _SEGS[k][0], _SEGS[k][1]
        with lock:
            runs[i][j] = (stats, comps[i][1][j][1])
            if op_done is not None:
                op_done(i, j)
            if all(r is not None for r in runs[i]):
                comp = comps[i][0]
                finish(i, comp, chip_mod.join_runs(comp.program, runs[i]))

    def own(i: int) -> list:
        """Compile program ``i`` here; its ops' indices in _SEGS."""
        comp, segs = _compile_part(jobs[i])
        with lock:
            comps[i], runs[i] = (comp, segs), [None] * len(segs)
            if compiled is not None:
                compiled(i, len(segs))
        base = len(_SEGS)
        _SEGS.extend((i, j, prog, jobs[i][2]) for j, (prog, _) in enumerate(segs))
        return list(range(base, len(_SEGS)))

    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i][1]))   # costliest first
    _SEGS.clear()
    if workers <= 1:
        try:
            for i in order:
                for k in own(i):
                    record(k, _run_segment(_SEGS[k]))
        finally:
            _SEGS.clear()
        return

    ctx = multiprocessing.get_context("fork")
    taken = ctx.Value("q", 1)         # this process takes the costliest program, order[0]
    claim_lock = ctx.Lock()
    claimed = ctx.RawArray("b", _MAX_OPS)
    results = ctx.Queue()
    stop = threading.Event()
    failed: list = []
    procs: list = []
    collector: list = []

    def received(kind, key, path, err) -> None:
        if err is not None:
            raise err
        if kind in ("compiled", "tick"):      # a worker's program: compiled, one op done
            with lock:
                call = compiled if kind == "compiled" else op_done
                if call is not None:
                    call(key, path)
            return
        with open(path, "rb") as f:
            got = pickle.load(f)
        os.remove(path)
        if kind == "op":
            record(key, got)
        else:
            with lock:
                finish(key, *got)

    def collect(halt) -> None:
        while not (halt.is_set() or stop.is_set()):
            try:
                item = results.get(timeout=0.1)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    failed.append(RuntimeError(f"a simulation worker died (exit code "
                                               f"{dead[0]}); try --workers 1"))
                    stop.set()
                continue
            try:
                received(*item)
            except BaseException as e:   # noqa: BLE001 - re-raised in the caller's thread
                failed.append(e)
                stop.set()

    def start_collector() -> None:
        halt = threading.Event()
        t = threading.Thread(target=collect, args=(halt,), daemon=True)
        collector.append((t, halt))
        t.start()

    def stop_collector() -> None:
        while collector:
            t, halt = collector.pop()
            halt.set()
            t.join()

    def fork(target, args) -> None:
        """Start a worker; no other thread runs while this process forks."""
        stop_collector()
        p = ctx.Process(target=target, args=args, daemon=True)
        p.start()
        procs.append(p)
        start_collector()

    _JOBS[:] = jobs       # configs hold mapping proxies, which do not pickle: fork shares them
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    # the spool is removed after the workers have stopped: one still writing its result into
    # it made the removal fail and hide the error being raised
    spool = tempfile.mkdtemp(prefix="tilesim-", dir=shm)
    try:
        for _ in range(min(workers, len(jobs)) - 1):
            fork(_part_worker, (order, taken, results, spool))
        start_collector()
        k = 0
        while k < len(order) and not stop.is_set():
            ops = own(order[k])
            free = workers - 1 - sum(p.is_alive() for p in procs)
            for _ in range(min(free, len(ops) - 1)):
                fork(_op_worker, (ops, claim_lock, claimed, results, spool))
            mine, pos = _by_cost(ops), [0]
            while not stop.is_set() and (op := _claim(mine, pos, claim_lock, claimed)) >= 0:
                record(op, _run_segment(_SEGS[op]))
                # a worker out of programs has freed its CPU: a helper takes ops of this one
                # (llama-3-8b decode: the head's worker ends while this one has layer ops left)
                free = workers - 1 - sum(p.is_alive() for p in procs)
                if free > 0 and sum(not claimed[k] for k in ops) > 1:
                    fork(_op_worker, (ops, claim_lock, claimed, results, spool))
            with taken.get_lock():
                k = taken.value
                taken.value += 1
        while not stop.is_set() and len(over) < len(jobs):
            stop.wait(0.05)
        stop.set()
        stop_collector()
        if failed:
            raise failed[0]
    finally:
        stop.set()
        stop_collector()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        shutil.rmtree(spool, ignore_errors=True)
        _JOBS.clear()
        _SEGS.clear()


def _cost(nds: list) -> float:
    """A rough simulation cost of a program's ops (bytes moved plus MACs / 256), for ordering."""
    return float(sum(nd["bytes_min"] + nd["in_bytes"] + nd["out_bytes"] + nd["macs"] / 256
                     for nd in nds))
