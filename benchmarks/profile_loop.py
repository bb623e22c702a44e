"""Where the chip's event loop spends its time, by function and line of tilesim/arch/_engine.py.

    python benchmarks/profile_loop.py [--case llama_layer] [--top 25] [--freq 999]

Runs one case of benchmarks/fingerprint.py (default: layer 0 of a llama-3-8b decode) in a
child process under Linux ``perf record``, with numba's line tables (NUMBA_DEBUGINFO=1, in a
cache of its own, .numba_cache/debuginfo-<source hash>: about 5 minutes to compile the first
time). The child finds where chip_run's object code (from that cache) sits in its memory; each
sample inside it goes to the source line addr2line gives, and that line to the function it is
written in (an ``inline="always"`` helper counts as itself, not as its caller), and within
``_chip_loop`` to the event kind whose branch it is in. Samples with no line (code the
compiler merged from several) are shown as such. Needs perf, addr2line and objdump.

Use it before optimising the loop. On 2026-12-03, of the llama layer's samples that had a line
(73%), the DRAM controller took 53% (``_dram_step``, its scan and column command, 32%), SRAM
bandwidth sharing 15%, the event queue 14% and the NoC 7%, although NoC hops are the most
numerous events (17.5 M of 38.5 M) and DRAM wake-ups the second (15.2 M).
"""
from __future__ import annotations

import argparse
import ast
import collections
import ctypes
import glob
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
import fingerprint  # noqa: E402
from conftest import _source_hash  # noqa: E402

ENGINE = ROOT / "tilesim" / "arch" / "_engine.py"
TOOLS = ("perf", "addr2line", "objdump")


def _run(cmd: list, what: str, **kw) -> subprocess.CompletedProcess:
    """``cmd``, or one line saying what failed and its last line of error output."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no error output"])[-1]
        raise SystemExit(f"profile_loop.py: {what} failed (exit {r.returncode}): {last}")
    return r


def _code_section(obj: Path) -> tuple[str, int, int]:
    """(name, file offset, size) of the object's largest code section (.text or .ltext)."""
    out = _run(["objdump", "-h", str(obj)], "objdump").stdout.splitlines()
    best = None
    for a, b in zip(out, out[1:]):
        f = a.split()
        if len(f) >= 7 and f[0].isdigit() and "CODE" in b:
            sec = (f[1], int(f[5], 16), int(f[2], 16))
            if best is None or sec[2] > best[2]:
                best = sec
    if best is None:
        raise SystemExit(f"{obj}: no code section")
    return best


def child(out: Path | None, case: str) -> None:
    """Run ``case`` (which loads or compiles the loop); then, given ``out``, write chip_run's
    object code and where it was loaded (out/chip.o, out/base) and run the case again."""
    from tilesim.arch import chip

    runs = list(fingerprint.CASES[case]())
    for _, prog, cfg in runs:
        chip.run(prog, cfg, validate=False)
    if out is None:
        return
    regions = []
    for line in open("/proc/self/maps"):
        f = line.split()
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        if "x" in f[1] and len(f) < 6:                 # anonymous and executable: JIT code
            regions.append((lo, ctypes.string_at(lo, hi - lo)))
    best = None
    for nbc in glob.glob(os.environ["NUMBA_CACHE_DIR"] + "/*/_engine.chip_run-*.nbc"):
        try:
            code = pickle.loads(Path(nbc).read_bytes())[0][2][0]  # the library's object code
        except (IndexError, TypeError, pickle.UnpicklingError) as e:
            raise SystemExit(f"{nbc}: not a numba cache entry this script can read ({e})")
        (out / "cand.o").write_bytes(code)
        _, off, size = _code_section(out / "cand.o")
        votes = collections.Counter()
        for p in range(0, size - 32, 997):              # 24-byte pieces found once in memory
            piece = code[off + p: off + p + 24]
            for lo, mem in regions:
                i = mem.find(piece)
                if i >= 0 and mem.find(piece, i + 1) < 0:
                    votes[lo + i - p] += 1
        if votes and (best is None or votes.most_common(1)[0][1] > best[1]):
            best = (*votes.most_common(1)[0], code)
    if best is None:
        raise SystemExit("chip_run's object code was not found in memory")
    (out / "chip.o").write_bytes(best[2])
    (out / "base").write_text(str(best[0]))
    for _, prog, cfg in runs:
        chip.run(prog, cfg, validate=False)


def _regions() -> tuple[list, list]:
    """Functions of _engine.py as (first line, last line, name), and the event branches of
    _chip_loop as (first line, name)."""
    src = ENGINE.read_text()
    defs = [(n.lineno, n.end_lineno, n.name) for n in ast.walk(ast.parse(src))
            if isinstance(n, ast.FunctionDef)]
    loop = next(d for d in defs if d[2] == "_chip_loop")
    kinds = [(i + 1, m.group(1)) for i, line in enumerate(src.splitlines())
             if loop[0] <= i + 1 <= loop[1]
             and (m := re.match(r"\s+if kind == (EV_\w+):", line))]
    return defs, kinds


def attribute(samples: collections.Counter, obj: Path, base: int) -> tuple[dict, dict]:
    """Samples by function (and _chip_loop branch) and by line of _engine.py."""
    sec, _, size = _code_section(obj)
    offs = sorted(o - base for o in samples if 0 <= o - base < size)
    # one line per address: "path:line" and at times " (discriminator n)"
    locs = [ln.split()[0] for ln in _run(
        ["addr2line", "-e", str(obj), "-j", sec] + [hex(o) for o in offs],
        "addr2line").stdout.splitlines()]
    defs, kinds = _regions()
    by_fn: dict = collections.Counter()
    by_line: dict = collections.Counter()
    for o, loc in zip(offs, locs):
        n = samples[o + base]
        path, _, ln = loc.rpartition(":")
        if not path.endswith("_engine.py") or not ln.isdigit():
            name = "(no line: merged code)" if ln == "?" or not ln.isdigit() else \
                f"({Path(path).name})"
            by_fn[name] += n
            continue
        ln = int(ln)
        by_line[ln] += n
        inner = [d for d in defs if d[0] <= ln <= d[1]]
        name = min(inner, key=lambda d: d[1] - d[0])[2] if inner else "(module)"
        if name == "_chip_loop":
            branch = [k for k in kinds if k[0] <= ln]
            name += f" [{branch[-1][1] if branch else 'dispatch'}]"
        by_fn[name] += n
    return by_fn, by_line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="llama_layer", choices=list(fingerprint.CASES))
    ap.add_argument("--top", type=int, default=25, help="lines to list")
    ap.add_argument("--freq", type=int, default=999, help="perf samples per second")
    ap.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child or a.compile:
        child(Path(a.child) if a.child else None, a.case)
        return 0
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"profile_loop.py needs {', '.join(missing)} (Linux perf, binutils)")
    env = dict(os.environ, NUMBA_DEBUGINFO="1",
               NUMBA_CACHE_DIR=str(ROOT / ".numba_cache" / f"debuginfo-{_source_hash()}"))
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "perf.data"
        if not glob.glob(env["NUMBA_CACHE_DIR"] + "/*/_engine.chip_run-*.nbc"):
            # code compiled in the process is not laid out as the cache's object code is
            print(f"compiling the loop with line tables into {env['NUMBA_CACHE_DIR']} "
                  f"(about 5 min on 2 cores, once) ...", flush=True)
            _run([sys.executable, "-W", "ignore", __file__, "--compile", "--case", "examples"],
                 "compiling the loop", env=env)
        print(f"perf record of {a.case} ...", flush=True)
        _run(["perf", "record", "-q", "-F", str(a.freq), "-o", str(data), "--",
              sys.executable, "-W", "ignore", __file__, "--child", d, "--case", a.case],
             "perf record", env=env)
        ips = _run(["perf", "script", "-i", str(data), "-F", "ip"], "perf script").stdout.split()
        samples = collections.Counter(int(x, 16) for x in ips)
        by_fn, by_line = attribute(samples, Path(d) / "chip.o", int((Path(d) / "base")
                                                                    .read_text()))
    total = sum(samples.values())
    inside = sum(by_fn.values())
    print(f"{total} samples, {inside} ({100 * inside / total:.0f}%) in chip_run's code "
          f"(the rest: Python, compiling the case's programs, numpy)")
    print("\nby function (share of chip_run's samples)")
    for name, n in by_fn.most_common():
        print(f"  {100 * n / inside:5.1f}%  {name}")
    src = ENGINE.read_text().splitlines()
    print(f"\ntop {a.top} lines")
    for ln, n in by_line.most_common(a.top):
        print(f"  {100 * n / inside:5.1f}%  {ln:5d}  {src[ln - 1].strip()[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
