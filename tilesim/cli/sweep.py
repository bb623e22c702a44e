"""`tilesim sweep`: run a design-space sweep on Dask into SQLite, or report one.

    tilesim sweep SWEEP.yaml [--scheduler ADDRESS] [--workers N] [--db FILE] [--retry-failed]
                             [--dry-run] [--json]
    tilesim sweep --report DB [--out DIR] [--json]

The sweep file format, the database and how points run are described in tilesim/sweep.py.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from tilesim.cli import print_json
from tilesim.errors import InputError

EXIT_LOST = 1
EXIT_INTERRUPTED = 130


def add_parser(sub) -> None:
    s = sub.add_parser(
        "sweep", help="run a design-space sweep (Dask, resumable SQLite), or report one",
        description="Run every point of a sweep file (a base chip, workloads, parameters to "
                    "vary) on a local Dask cluster or an existing one, recording each result "
                    "in SQLite as it finishes: re-running skips recorded points, so an "
                    "interrupted sweep resumes where it stopped. --report DB prints the "
                    "table and the Pareto fronts (tokens/s against energy per token, memory "
                    "cost, area proxy) and, with --out, plots them.",
        epilog="The sweep file format is described in tilesim/sweep.py; an example: "
               "configs/sweeps/blackhole-design-space.yaml.")
    s.add_argument("sweep", nargs="?", metavar="SWEEP.yaml", help="the sweep file to run")
    s.add_argument("--db", metavar="FILE",
                   help="results database (default: the sweep file with suffix .db)")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (its "
                        "workers need tilesim installed)")
    s.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the local Dask cluster (default: one per core); "
                        "0 runs the points in this process without Dask")
    s.add_argument("--retry-failed", action="store_true",
                   help="run points recorded as failed again")
    s.add_argument("--dry-run", action="store_true",
                   help="list the points and what would run, without running them")
    s.add_argument("--report", metavar="DB", help="report a sweep database instead of running")
    s.add_argument("--out", metavar="DIR",
                   help="with --report: write the Pareto plots, points.csv and report.json")
    s.add_argument("--json", action="store_true", help="print results as JSON")
    s.add_argument("--evaluator", help=argparse.SUPPRESS)     # module:function, for tests
    s.set_defaults(func=run)


def run(args) -> int:
    if args.report:
        if args.sweep:
            raise InputError("--report: give either a sweep file to run or --report DB, "
                             "not both")
        for flag in ("scheduler", "workers", "db", "evaluator"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag}: not used with --report")
        return _report(args)
    if not args.sweep:
        raise InputError("a sweep file to run (tilesim sweep SWEEP.yaml), or --report DB")
    if args.out:
        raise InputError("--out: only with --report DB")
    if args.scheduler and args.workers is not None:
        raise InputError("--workers: not used with --scheduler (the cluster has its workers)")
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers: {args.workers} is not allowed (0 for no Dask, or >= 1)")
    return _run(args)


def _run(args) -> int:
    from tilesim import sweep

    spec = sweep.load_sweep(args.sweep, evaluator=args.evaluator)
    db = args.db or str(Path(args.sweep).with_suffix(".db"))
    if args.dry_run:
        return _dry_run(spec, db, args)
    try:
        stats = sweep.run_sweep(spec, db, scheduler=args.scheduler, workers=args.workers,
                                retry_failed=args.retry_failed, progress=True)
    except KeyboardInterrupt:
        with sweep.Store(db) as store:
            n = store.count()
        print(f"interrupted: {n} points are recorded in {db}; run the same command again to "
              f"resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print_json({"sweep": spec.name, "db": db, **stats.as_dict()})
    else:
        print(f"sweep {spec.name}: {stats.points} points: {stats.already} already recorded, "
              f"{stats.ran} ran ({stats.ok} ok, {stats.failed} failed), {stats.invalid} "
              f"invalid -> {db}")
        print(f"  report: tilesim sweep --report {db}")
    if stats.lost:
        print(f"error: {stats.lost} points were lost with their workers and not recorded; run "
              f"the same command again to retry them (first: {stats.lost_errors[0]})",
              file=sys.stderr)
        return EXIT_LOST
    return 0


def _dry_run(spec, db: str, args) -> int:
    from tilesim import sweep

    points = spec.points()
    done: set = set()
    if Path(db).is_file():
        with sweep.Store(db) as store:
            done = store.finished((p.key for p in points), retry_failed=args.retry_failed)
    if args.json:
        print_json([{"key": p.key, "params": p.params, "workload": p.workload,
                     "invalid": p.error, "recorded": p.key in done} for p in points])
        return 0
    invalid = [p for p in points if p.error]
    todo = [p for p in points if p.key not in done]
    print(f"sweep {spec.name}: {spec.mode}, {len(spec.parameters)} parameters, "
          f"{len(spec.workloads)} workloads -> {len(points)} points; {len(done)} recorded in "
          f"{db}, {len(todo)} to run ({sum(1 for p in todo if p.error)} of them invalid)")
    for p in invalid[:20]:
        print(f"  invalid  {_params_text(p.params)}: {p.error}")
    if len(invalid) > 20:
        print(f"  ... {len(invalid) - 20} more invalid")
    return 0


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={_value_text(k, v)}" for k, v in params.items())


def _value_text(path: str, v) -> str:
    from tilesim.config import format_size

    if isinstance(v, int) and not isinstance(v, bool) and path.endswith("_bytes") and v >= 1024:
        return format_size(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


# --------------------------------------------------------------------------------------------
# --report
# --------------------------------------------------------------------------------------------

FRONT_MARK = {"energy": "E", "cost": "$", "area": "A"}


def _report(args) -> int:
    from tilesim import sweep

    rep = sweep.report(args.report)
    plots = []
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            plots = sweep.plot_fronts(rep, out)
            sweep.write_text_atomic(out / "points.csv", _csv(rep))
            sweep.write_text_atomic(out / "report.json",
                                    json.dumps({**rep, "plots": plots}, indent=1) + "\n")
        except OSError as e:
            raise InputError(f"--out: cannot write to {args.out} ({e.__class__.__name__}: "
                             f"{e})") from None
    if args.json:
        print_json({**rep, "plots": plots})
        return 0
    _print_report(rep)
    for p in plots:
        print(f"plot: {p}")
    if args.out:
        print(f"table: {Path(args.out) / 'points.csv'}  json: {Path(args.out) / 'report.json'}")
    return 0


def _short_names(paths: list[str]) -> dict[str, str]:
    """The last segment of each path, or more of it where that is ambiguous."""
    out = {}
    for p in paths:
        parts = p.split(".")
        n = 1
        while n < len(parts) and sum(q.split(".")[-n:] == parts[-n:] for q in paths) > 1:
            n += 1
        out[p] = ".".join(parts[-n:])
    return out


def _g(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1e4:
        return f"{v:,.0f}" if abs(v) < 1e15 else f"{v:.3e}"
    return f"{v:.{digits}g}"


def _print_report(rep: dict) -> None:
    c = rep["counts"]
    params = rep["parameters"]
    names = _short_names(params)
    print(f"{rep['db']}: {len(rep['rows'])} points ({c['ok']} ok, {c['failed']} failed, "
          f"{c['invalid']} invalid); varied: {', '.join(params) or 'nothing'}")
    print("front: E = Pareto-optimal in tokens/s against energy per token, $ against memory "
          "cost, A against the area proxy (MAC units + SRAM bytes)")
    head = [names[p] for p in params] + ["tokens/s", "pJ/token", "mem $", "area proxy",
                                         "front", "status"]
    for wl in sorted({r["workload"] for r in rep["rows"]}):
        rows = [r for r in rep["rows"] if r["workload"] == wl]
        table = []
        for r in rows:
            cells = [_value_text(p, r["params"].get(p, "")) for p in params]
            cells += [_g(r["tokens_per_s"]), _g(r["energy_pj_per_token"]),
                      _g(r["memory_cost_usd"]), _g(r["area_proxy"]),
                      "".join(FRONT_MARK[f] for f in r["front"]) or "",
                      r["status"] if r["status"] == "ok" else
                      f"{r['status']}: {_clip(r['error'] or '', 70)}"]
            table.append(cells)
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head[:-1])]
        print(f"\n{wl}")
        print("  " + "  ".join(h.rjust(w) for h, w in zip(head[:-1], widths)) + "  status")
        for t in table:
            print("  " + "  ".join(x.rjust(w) for x, w in zip(t[:-1], widths)) + "  " + t[-1])


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _csv(rep: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["tokens_per_s", "energy_pj_per_token", "seconds", "memory_cost_usd", "area_proxy"]
    w.writerow(["key", "workload", *rep["parameters"], *cols, "front", "status", "error"])
    for r in rep["rows"]:
        w.writerow([r["key"], r["workload"],
                    *(json.dumps(r["params"][p]) if isinstance(r["params"].get(p), (dict, list))
                      else r["params"].get(p, "") for p in rep["parameters"]),
                    *("" if r[c] is None else r[c] for c in cols),
                    "+".join(r["front"]), r["status"], r["error"] or ""])
    return buf.getvalue()
