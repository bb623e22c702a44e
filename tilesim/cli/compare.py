"""`tilesim compare`: the same workloads on several chips, side by side.

    tilesim compare A.yaml B.yaml [C.yaml ...] --model M [--phases prefill,decode]
                    [--batch 1,8,...] [--context N] [--ignore-capacity] [--out DIR] [--json]

Every chip runs every (phase, batch) at one context length through ``tilesim.simulate``. The
table has one column per chip (and, for two chips, their ratio): TTFT for prefill, time per
output token for decode, tokens/s, DRAM bandwidth achieved and its % of peak, energy per token
and its split, and per chip the memory capacity and an estimated memory cost (tilesim/costs.py,
from cited $/GB). ``--json`` prints a list, one object per chip and workload: the run's
summary keys plus ``config``, ``phase`` and the memory figures. ``--out DIR`` writes a bar
chart per metric and decode tokens/s against batch for each chip.

A run that the simulator refuses (a model too large for a chip's memory, say) leaves its
cells empty, prints its one-line reason on stderr and makes the exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tilesim.cli import print_json
from tilesim.errors import InputError, TilesimError

DEFAULT_CONTEXT = 512
"""Prompt / KV length when --context is not given: long enough that a llama-3-8b prefill on the
blackhole-like twins does 256 MACs per weight byte, short enough that the pair's compare (two
prefills and two decodes) runs in about three minutes on a 2-core machine."""
COMPONENTS = ("mac", "sram", "noc", "vector", "dram", "static")


def add_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help="run the same workloads on several chips, side by side",
        description="Run a model's prefill and/or decode on every chip and print one "
                    "side-by-side table: TTFT, time per output token, tokens/s, DRAM "
                    "bandwidth and % of peak, energy per token with its split, memory "
                    "capacity and estimated memory cost.")
    c.add_argument("configs", nargs="+", metavar="CONFIG", help="chip YAML files or presets")
    c.add_argument("--model", required=True, metavar="M",
                   help="a model preset (e.g. llama-3-8b) or a config.json path")
    c.add_argument("--phases", default="prefill,decode", metavar="LIST",
                   help="comma-separated: prefill, decode (default both)")
    c.add_argument("--batch", default="1", metavar="LIST",
                   help="comma-separated batch sizes, e.g. 1,8,32 (default 1)")
    c.add_argument("--context", type=int, default=DEFAULT_CONTEXT, metavar="N",
                   help=f"prompt length for prefill, KV-cache length for decode (default "
                        f"{DEFAULT_CONTEXT})")
    c.add_argument("--weight-dtype", default="bf16", metavar="T",
                   help="weights datatype: bf16, fp8e4m3, int8, int4 (default bf16)")
    c.add_argument("--kv-dtype", default="bf16", metavar="T",
                   help="KV cache datatype, as --weight-dtype (default bf16)")
    c.add_argument("--routing", default=None, metavar="R",
                   help="MoE tokens over experts: random (default) or balanced, as tilesim run")
    c.add_argument("--ignore-capacity", action="store_true",
                   help="run models that do not fit a chip's memory anyway (what-if)")
    c.add_argument("--out", metavar="DIR", help="write bar plots per metric, decode tokens/s "
                                                "against batch, and compare.json")
    c.add_argument("--json", action="store_true", help="print a list of result objects")
    c.add_argument("--evaluator", help=argparse.SUPPRESS)     # module:function, for tests
    c.set_defaults(func=run)


def _list(flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    import difflib

    out = []
    for item in (x.strip() for x in text.split(",")):
        if item not in allowed:
            hint = difflib.get_close_matches(item, allowed, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise InputError(f"{flag}: {item!r} is not allowed (a comma-separated list of "
                             f"{', '.join(allowed)}{extra})")
        if item not in out:
            out.append(item)
    return out


def _ints(flag: str, text: str) -> list[int]:
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item.isdigit() or int(item) < 1:
            raise InputError(f"{flag}: {item!r} is not allowed (a comma-separated list of "
                             f"integers >= 1, e.g. 1,8,32)")
        if int(item) not in out:
            out.append(int(item))
    return out


def run(args) -> int:
    from tilesim import config, costs
    from tilesim.programs import models
    from tilesim.programs.graph import check_routing
    from tilesim.report.progress import ProgressBar
    from tilesim.sweep import DEFAULT_EVALUATOR, jsonable, load_evaluator

    phases = _list("--phases", args.phases, models.PHASES)
    batches = _ints("--batch", args.batch)
    if args.context < 1:
        raise InputError(f"--context: {args.context} is not allowed (an integer >= 1)")
    spec = models.resolve_model(args.model, weight_dtype=args.weight_dtype,
                                kv_dtype=args.kv_dtype)
    for ph in phases:
        models.check_context(spec, args.context, ph)
    try:
        evaluate = load_evaluator(args.evaluator or DEFAULT_EVALUATOR)
    except InputError as e:
        raise InputError(f"--evaluator: {e}") from None
    if args.routing is not None:
        check_routing(args.routing, "--routing")
    extra = {} if args.routing is None else {"routing": args.routing}   # (as sweep passes it)
    chips = [config.load(c) for c in args.configs]
    names = _column_names(chips)

    results, errors = [], []
    workloads = [(ph, b) for ph in phases for b in batches]
    with ProgressBar(len(workloads) * len(chips), "compare") as bar:
        for ph, b in workloads:
            for chip, name in zip(chips, names):
                base = {"config": name, "config_file": chip.source, "model": spec.name,
                        "phase": ph, "batch": b, "context": args.context,
                        "memory_standard": chip.memory.standard if chip.memory else "none",
                        "memory_capacity_bytes": costs.memory_capacity_bytes(chip),
                        "memory_cost_usd": costs.memory_cost_usd(chip)}
                try:
                    res = evaluate(chip, spec, ph, b, args.context,
                                   ignore_capacity=args.ignore_capacity, **extra)
                except TilesimError as e:
                    errors.append(f"{name}, {ph} batch {b}: {e}")
                    results.append({**base, "error": str(e)})
                else:
                    summary = res.summary() if hasattr(res, "summary") else res
                    results.append({**jsonable(dict(summary)), **base, "error": None})
                bar.update()

    plots = []
    if args.out:
        plots = _write_out(Path(args.out), results, names, chips)
    if args.json:
        print_json(results)
    else:
        from tilesim.cli.run import types_label
        types = types_label(spec.weight_dtype, spec.act_dtype, spec.kv_dtype,
                            (args.routing or "random") if spec.n_experts else None)
        _print_table(results, names, chips, f"{spec.name} ({types})", args.context, workloads)
        for p in plots:
            print(f"plot: {p}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 2 if errors else 0


def _column_names(chips) -> list[str]:
    """Chip names, or file names where two chips share a name."""
    names = [c.name for c in chips]
    out = []
    for c, n in zip(chips, names):
        if names.count(n) > 1:
            n = Path(c.source).stem if c.source else n
        if n in out:
            n = f"{n} ({len(out) + 1})"
        out.append(n)
    return out


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def fmt_time(s) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


def static_not_modelled(s: dict) -> bool:
    """A run summary whose chip's energy table has no static power (the presets' tables cite
    none: tilesim/arch/energy.py): print 'not modelled', not 'static 0%'."""
    return s.get("static_power_w") == 0.0


def fmt_energy(pj) -> str:
    if pj is None:
        return "-"
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return f"{pj / scale:.4g} {unit}"
    return f"{pj:.4g} pJ"


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def component_per_token(r: dict, k: str):
    """pJ per token of energy component ``k``: ``energy_pj_by_component`` is the whole step's
    split (every token of a prefill, every sequence of a decode batch), scaled here to the
    step's ``energy_pj_per_token``."""
    comps = r.get("energy_pj_by_component") or {}
    v, per_token = _num(comps.get(k)), _num(r.get("energy_pj_per_token"))
    total = sum(_num(x) or 0.0 for x in comps.values())
    if v is None or per_token is None or not total:
        return None
    return v * per_token / total


def _rows_for(results: list[dict], phase: str) -> list[tuple[str, callable, callable]]:
    """(label, value(result) -> number or None, text(result) -> str) of one workload block."""
    first = ("TTFT", "ttft_s") if phase == "prefill" else ("time per output token", "tpot_s")
    rows = [
        (first[0], lambda r, k=first[1]: _num(r.get(k)), lambda r, k=first[1]: fmt_time(
            _num(r.get(k)))),
        ("tokens/s", lambda r: _num(r.get("tokens_per_s")),
         lambda r: "-" if _num(r.get("tokens_per_s")) is None else f"{r['tokens_per_s']:.4g}"),
        ("DRAM GB/s (% of peak)", lambda r: _num(r.get("dram_gbps")),
         lambda r: "-" if _num(r.get("dram_gbps")) is None else
         f"{r['dram_gbps']:.1f} ({_num(r.get('dram_pct_of_peak')) or 0:.0f}%)"),
        ("energy per token", lambda r: _num(r.get("energy_pj_per_token")),
         lambda r: fmt_energy(_num(r.get("energy_pj_per_token")))),
    ]
    comps = []
    for r in results:
        for k in (r.get("energy_pj_by_component") or {}):
            if k not in comps:
                comps.append(k)
    comps.sort(key=lambda k: (COMPONENTS.index(k) if k in COMPONENTS else len(COMPONENTS), k))
    for k in comps:
        def value(r, k=k):
            return component_per_token(r, k)

        def text(r, k=k, value=value):
            v, tot = value(r), _num(r.get("energy_pj_per_token"))
            if v is None:
                return "-"
            if k == "static" and static_not_modelled(r):
                return "not modelled"
            return fmt_energy(v) + (f" ({100 * v / tot:.0f}%)" if tot else "")
        rows.append((f"  {k}", value, text))
    return rows


def _print_table(results, names, chips, model, context, workloads) -> None:
    from tilesim.arch import dram
    from tilesim.config import format_size

    two = len(names) == 2
    head = ["", *names] + (["ratio"] if two else [])
    lines: list[list[str]] = []

    def ratio(a, b):
        return f"{b / a:.3g}x" if a and b is not None and a is not None else ""

    def add(label, values, texts):
        lines.append([label, *texts] + ([ratio(values[0], values[1])] if two else []))

    cost = [r["memory_cost_usd"] for r in results[: len(names)]]
    add("memory", [None] * len(chips), [
        "none" if c.memory is None else
        f"{c.memory.devices} x {c.memory.standard}, "
        f"{format_size(dram.capacity_bytes(c.memory))}" for c in chips])
    cap = [0 if c.memory is None else dram.capacity_bytes(c.memory) for c in chips]
    add("memory capacity (GiB)", cap, [f"{x / 2**30:g}" for x in cap])
    add("memory cost (est., $)", cost, ["n/a" if x is None else f"${x:,.0f}" for x in cost])
    peak = [0.0 if c.memory is None else dram.peak_gbps(c.memory) for c in chips]
    add("peak DRAM GB/s", peak, [f"{x:.1f}" for x in peak])
    add("peak TFLOP/s", [c.peak_tflops for c in chips], [f"{c.peak_tflops:.4g}" for c in chips])
    for ph, b in workloads:
        block = [r for r in results if r["phase"] == ph and r["batch"] == b]
        lines.append([f"{ph}, batch {b}"])
        for label, value, text in _rows_for(block, ph):
            add(f"  {label}", [value(r) for r in block], [text(r) for r in block])
    widths = [max(len(x[i]) for x in [head, *lines] if i < len(x)) for i in range(len(head))]
    print(f"{model}, context {context}"
          + (f"; ratio = {names[1]} / {names[0]}" if two else ""))
    print("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                    for i, h in enumerate(head)).rstrip())
    for ln in lines:
        if len(ln) == 1:
            print(ln[0])
            continue
        print("  ".join(x.ljust(widths[0]) if i == 0 else x.rjust(widths[i])
                        for i, x in enumerate(ln)).rstrip())


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

BAR_METRICS = (
    ("ttft_s", "TTFT (s)", "prefill"),
    ("tpot_s", "time per output token (s)", "decode"),
    ("tokens_per_s", "tokens/s", None),
    ("dram_gbps", "DRAM GB/s achieved", None),
    ("dram_pct_of_peak", "DRAM bandwidth, % of peak", None),
)


def _write_out(out: Path, results, names, chips) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from tilesim.sweep import save_figure, write_text_atomic

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out: cannot create {out} ({e.__class__.__name__}: {e})") from None
    paths = []

    def groups(phase=None):
        seen = []
        for r in results:
            if (phase is None or r["phase"] == phase) and (r["phase"], r["batch"]) not in seen:
                seen.append((r["phase"], r["batch"]))
        return seen

    def value(ph, b, name, key):
        for r in results:
            if (r["phase"], r["batch"], r["config"]) == (ph, b, name):
                return _num(r.get(key))
        return None

    def save(fig, name):
        fig.tight_layout()
        path = out / name
        try:
            save_figure(fig, path)
        except OSError as e:
            raise InputError(f"--out: cannot write {path} ({e.__class__.__name__}: {e})") \
                from None
        finally:
            plt.close(fig)
        paths.append(str(path))

    width = 0.8 / max(1, len(names))
    phases = list(dict.fromkeys(r["phase"] for r in results))
    for key, label, only in BAR_METRICS:
        panels = [ph for ph in phases if only in (None, ph)
                  and any(value(ph, b, n, key) is not None for _, b in groups(ph)
                          for n in names)]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(
            sum(max(3.2, 0.9 * len(groups(ph)) * len(names) + 1.2) for ph in panels), 3.2))
        for ax, ph in zip(axes[0], panels):
            gs = groups(ph)
            x = np.arange(len(gs))
            for i, n in enumerate(names):
                ys = [value(ph, b, n, key) for _, b in gs]
                ax.bar(x + (i - (len(names) - 1) / 2) * width,
                       [np.nan if y is None else y for y in ys], width, label=n)
            ax.set_xticks(x, [f"batch {b}" for _, b in gs], fontsize=8)
            ax.set_title(ph, fontsize=9)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        save(fig, f"{key}.png")

    # energy per token stacked by component: one small panel per workload, a bar per chip
    gs = groups()
    comps = [k for k in COMPONENTS if any(k in (r.get("energy_pj_by_component") or {})
                                          for r in results)]
    if comps:
        batches = list(dict.fromkeys(b for _, b in gs))
        fig, axes = plt.subplots(len(phases), len(batches), squeeze=False, figsize=(
            len(batches) * max(2.6, 0.7 * len(names) + 1.2), 2.9 * len(phases)))
        for (ph, b) in gs:
            ax = axes[phases.index(ph)][batches.index(b)]
            bottom = np.zeros(len(names))
            for j, k in enumerate(comps):
                ys = []
                for n in names:
                    r = next((r for r in results if (r["phase"], r["batch"], r["config"]) ==
                              (ph, b, n)), {})
                    ys.append(component_per_token(r, k) or 0.0)
                ax.bar(range(len(names)), ys, 0.6, bottom=bottom, color=f"C{j}", label=k)
                bottom += np.array(ys)
            ax.set_xticks(range(len(names)), names, fontsize=6, rotation=15)
            ax.set_title(f"{ph}, batch {b}", fontsize=8)
            ax.set_ylabel("pJ per token", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        axes[0][-1].legend(fontsize=6)
        fig.suptitle("energy per token by component", fontsize=9)
        save(fig, "energy_pj_per_token.png")

    # memory cost per chip
    cost = {r["config"]: r["memory_cost_usd"] for r in results}
    if any(v is not None for v in cost.values()):
        fig, ax = plt.subplots(figsize=(max(3.5, 1.0 * len(names) + 1.5), 3.0))
        ax.bar(range(len(names)), [np.nan if cost[n] is None else cost[n] for n in names],
               color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=15)
        ax.set_ylabel("memory cost, est. ($)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        save(fig, "memory_cost_usd.png")

    # decode tokens/s against batch, one line per chip
    batches = sorted({b for ph, b in groups("decode")})
    if batches:
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        for i, n in enumerate(names):
            ys = [value("decode", b, n, "tokens_per_s") for b in batches]
            ax.plot(batches, [np.nan if y is None else y for y in ys], "o-", label=n)
        if len(batches) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xlabel("batch", fontsize=8)
        ax.set_ylabel("decode tokens/s", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "decode_tokens_per_s_vs_batch.png")

    try:
        write_text_atomic(out / "compare.json", json.dumps(results, indent=1) + "\n")
    except OSError as e:
        raise InputError(f"--out: cannot write {out / 'compare.json'} ({e})") from None
    return paths
