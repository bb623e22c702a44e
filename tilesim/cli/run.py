"""`tilesim run`: compile a transformer step for a chip, simulate it, report it.

The terminal summary gives total cycles and time (TTFT for prefill, time per output token and
tokens/s for decode), engine utilisation, achieved DRAM bandwidth against peak, energy per token
by component and the ops that take longest. ``--json`` prints :meth:`Result.summary` plus the
op table; ``--out DIR`` writes summary.json, ops.csv and plots (the timeline of one layer, the
roofline with every op on it, the energy breakdown).
"""
from __future__ import annotations

import csv
import json
import os

from tilesim.cli import print_json

DEFAULT_CHIP = "h100-like-hbm3"
DEFAULT_MODEL = "llama-3-8b"


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="simulate one prefill or decode step of a transformer",
                       description="Compile a transformer step into tile programs for a chip, "
                                   "run them cycle by cycle and report time, bandwidth and "
                                   "energy. With no arguments: llama-3-8b decode, batch 1, "
                                   f"context 1024 on {DEFAULT_CHIP}.")
    p.add_argument("config", nargs="?", default=DEFAULT_CHIP, metavar="CONFIG",
                   help=f"chip preset or YAML file (default {DEFAULT_CHIP})")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model preset or path to a Hugging Face config.json (default "
                        f"{DEFAULT_MODEL})")
    p.add_argument("--phase", default="decode", choices=("prefill", "decode"))
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--context", type=int, default=1024,
                   help="prompt tokens (prefill) or cached tokens (decode); default 1024")
    p.add_argument("--weight-dtype", default=None,
                   help="weights datatype: bf16, fp8e4m3, int8, int4 (default bf16)")
    p.add_argument("--kv-dtype", default=None,
                   help="KV cache datatype: bf16, fp8e4m3, int8, int4 (default bf16; "
                        "converted to the arrays' type as it is read)")
    p.add_argument("--routing", default="random",
                   help="MoE tokens over experts: random (the experts independent choices "
                        "reach on average; default) or balanced (every expert)")
    p.add_argument("--all-layers", action="store_true",
                   help="simulate every layer instead of once per distinct layer shape, "
                        "and a large LM head whole instead of as one of its equal vocab slices")
    p.add_argument("--ignore-capacity", action="store_true",
                   help="run even if weights and KV cache exceed the chip's memory")
    p.add_argument("--workers", type=int, default=None,
                   help="processes to simulate the ops in (default: one per CPU; the "
                        "results do not depend on it)")
    p.add_argument("--top", type=int, default=8, help="ops to list (default 8)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", metavar="DIR", help="write summary.json, ops.csv and plots here")
    p.set_defaults(func=run)


def run(args) -> int:
    from tilesim.step import simulate

    res = simulate(args.config, args.model, args.phase, args.batch, args.context,
                   all_layers=args.all_layers, ignore_capacity=args.ignore_capacity,
                   weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype,
                   routing=args.routing,
                   progress=False if args.json else None,
                   workers=args.workers)
    summary = res.summary()
    ops = res.op_table()
    if args.out:
        write_outputs(res, summary, ops, args.out)
    if args.json:
        print_json(dict(summary, ops=ops))
        return 0
    print(format_summary(summary, ops, args.top))
    if args.out:
        print(f"wrote {args.out}/summary.json, ops.csv, timeline.png, roofline.png, energy.png")
    return 0


def types_label(weight: str, act: str, kv: str, routing: str | None) -> str:
    """The model's datatypes, and its MoE routing (None: no experts): what a report's first
    line says its numbers are for."""
    moe = f", {routing} MoE routing" if routing else ""
    return f"weights {weight}, activations {act}, KV cache {kv}{moe}"


def format_summary(s: dict, ops: list, top: int) -> str:
    types = types_label(s["weight_dtype"], s["act_dtype"], s["kv_dtype"], s.get("moe_routing"))
    lines = [f"{s['model']} {s['phase']}  batch {s['batch']}  context {s['context']}  on "
             f"{s['config']}  ({types})"]
    t = s["seconds"]
    lines.append(f"  cycles            {s['cycles']:,}  ({t * 1e3:.3f} ms)")
    if s["phase"] == "prefill":
        lines.append(f"  TTFT              {t * 1e3:.3f} ms   ({s['tokens_per_s']:,.0f} prompt "
                     "tokens/s)")
    else:
        lines.append(f"  time per token    {t * 1e3:.3f} ms   ({s['tokens_per_s']:,.1f} tokens/s "
                     f"over the batch)")
    lines.append(f"  MACs              {s['macs']:,} executed = {s['model_macs']:,} in the model"
                 if s["macs"] == s["model_macs"] else
                 f"  MACs              {s['macs']:,} executed, {s['model_macs']:,} in the model")
    lines.append(f"  DRAM              {s['dram_read_bytes'] / 1e9:.3f} GB read, "
                 f"{s['dram_write_bytes'] / 1e9:.3f} GB written; {s['dram_gbps']:.1f} GB/s = "
                 f"{s['dram_pct_of_peak']:.1f}% of {s['peak_dram_gbps']:.1f} GB/s peak")
    util = "  ".join(f"{k} {v:.1f}%" for k, v in s["engine_utilisation_pct"].items())
    lines.append(f"  busy (all cores)  {util};  MAC utilisation {s['mac_utilisation_pct']:.1f}%")
    from tilesim.cli.compare import fmt_energy, static_not_modelled
    e = s["energy_pj_by_component"]
    total = sum(e.values()) or 1.0
    split = "  ".join("static not modelled" if k == "static" and static_not_modelled(s)
                      else f"{k} {100 * v / total:.0f}%" for k, v in e.items())
    lines.append(f"  energy            {fmt_energy(s['energy_pj_per_token'])} per token  "
                 f"({split})")
    lines.append(f"  top ops by time (of {len(ops)}):")
    for r in ops[:top]:
        share = 100 * r["cycles"] / s["cycles"] if s["cycles"] else 0
        lines.append(f"    {r['op']:<28} {r['kind']:<12} {r['cycles']:>14,} cycles  {share:5.1f}%"
                     f"  {r['dram_bytes'] / 1e6:10.1f} MB")
    progs = ", ".join(f"{p['label']} x{p['times']}" for p in s["simulated_programs"])
    lines.append(f"  simulated: {progs}; wall time {s['wall_seconds']:.1f} s")
    return "\n".join(lines)


def write_outputs(res, summary: dict, ops: list, out: str) -> None:
    """summary.json, ops.csv, timeline.png (one layer), roofline.png, energy.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tilesim.report.timeline import plot_timeline

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(dict(summary, ops=ops), f, indent=2)
    with open(os.path.join(out, "ops.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["op", "kind", "cycles", "macs", "dram_bytes"])
        w.writeheader()
        w.writerows(ops)
    layer = next((p for p in res.parts if p.label.startswith("layer")), res.parts[0])
    plot_timeline(layer.stats, layer.program, os.path.join(out, "timeline.png"),
                  title=f"{summary['model']} {summary['phase']}: {layer.label}")
    # roofline: attainable MAC/s = min(peak, intensity x bandwidth)
    chip = res.chip
    peak = chip.peak_macs_per_cycle * chip.clock_ghz * 1e9
    bw = summary["peak_dram_gbps"] * 1e9
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [2 ** i for i in range(-4, 14)]
    ax.loglog(xs, [min(peak, x * bw) for x in xs], "k-", label="roof")
    clock = chip.clock_ghz * 1e9
    for r in ops:
        if r["macs"] and r["dram_bytes"] and r["cycles"]:
            ax.loglog(r["macs"] / r["dram_bytes"], r["macs"] / (r["cycles"] / clock), "o",
                      label=r["op"])
    ax.set_xlabel("arithmetic intensity (MACs per DRAM byte)")
    ax.set_ylabel("achieved MACs per second")
    ax.set_title(f"{chip.name}: ops of {summary['model']} {summary['phase']}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "roofline.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    from tilesim.cli.compare import static_not_modelled
    e = summary["energy_pj_by_component"]
    ax.bar(["static\nnot modelled" if k == "static" and static_not_modelled(summary) else k
            for k in e],
           [v / res.tokens / 1e6 for v in e.values()])
    ax.set_ylabel("uJ per token")
    ax.set_title("energy by component")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "energy.png"), dpi=120)
    plt.close(fig)
