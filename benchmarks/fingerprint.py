"""A fingerprint of the chip loop's results, to prove a change to the engine changed no bit.

    python benchmarks/fingerprint.py [--cases NAME ...] [--repeats R] [--save FILE.json]
                                     [--check FILE.json]

Each case compiles its programs once, then runs them with ``chip.run`` ``--repeats`` times
(default 1) and prints a SHA-256 of every per-instruction time and counter of every run
(t_issue, t_start, t_end, cycles, engine busy cycles, flits per NoC link, flit- and byte-hops,
SRAM bytes per core, DMA requests, DRAM bytes, the DRAM counters per channel and the energy),
the events the loop handled by kind, and the median wall time of the ``chip.run`` calls in
seconds. ``--save`` writes the hashes (and events and times) to a JSON file; ``--check``
compares the hashes with such a file and exits 1 when one differs. Record one before touching
``tilesim/arch/_engine.py`` and check against it after every change.

Cases: the three example programs (tilesim/programs/examples) on their chips; a gemm_tile_loop;
a multi-core weight-streaming GEMM (benchmarks/bench_chip.py, K = N = 2048) on tpu-v4i-like;
the tiny models of tests/programs/test_codegen.py in prefill and decode; gpt2 decode at context
128 on tpu-v4i-like and on h100-like-hbm3, and its prefill of 128 tokens on tpu-v4i-like; and
layer 0 of llama-3-8b decode at context 1024 on h100-like-hbm3 with 1 KiB DMA requests (871 K
requests, 38.6 M events: the slow one, 3.9 s a run on the 2-core Xeon this was written on,
11.3 s before the loop lost its reference counting and its heap).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "NUMBA_CACHE_DIR" not in os.environ:      # the same source-hash cache the tests use
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _source_hash  # noqa: E402
    os.environ["NUMBA_CACHE_DIR"] = str(ROOT / ".numba_cache" / _source_hash())

import numpy as np  # noqa: E402

from tilesim import config  # noqa: E402
from tilesim.arch import chip  # noqa: E402


def _examples():
    from tilesim.isa import assemble
    from tilesim.programs.examples import path

    for name, chip_name in (("gemm_single_buffered", "teach-4x4"),
                            ("gemm_double_buffered", "teach-4x4"),
                            ("gemm_two_core", "teach-2core")):
        yield name, assemble(path(name).read_text(), name), config.load(chip_name)


def _tile_loop():
    from tilesim.isa import assemble
    from tilesim.programs.examples import gemm_tile_loop

    cfg = config.load("teach-4x4")
    yield "a_tiled", assemble(gemm_tile_loop(16, 4096, 4, 4, 2, a_tiled=True), "loop"), cfg
    yield "row_major", assemble(gemm_tile_loop(32, 512, 4, 4, 1), "loop1"), cfg


def _gemm_multicore():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_chip import gemm_program

    cfg = config.load("tpu-v4i-like")
    yield "gemm", gemm_program(cfg, 256, 2048, 2048, cfg.cores.count), cfg


def _simulated(cfg, spec, phase, batch, context):
    """The programs ``tilesim.simulate`` runs for one step (embed, layer groups, head)."""
    from tilesim.step import simulate

    res = simulate(cfg, spec, phase, batch, context, progress=False)
    for part in res.parts:
        yield part.label, part.program, res.chip


def _tiny_models():
    from tests.programs.test_codegen import SPECS, tiny_chip

    cfg = tiny_chip("bf16")
    for name, spec in SPECS.items():
        for phase, batch, context in (("prefill", 2, 9), ("decode", 3, 17)):
            for label, prog, c in _simulated(cfg, spec, phase, batch, context):
                yield f"{name}/{phase}/{label}", prog, c


def _gpt2(chip_name, phase="decode"):
    def gen():
        yield from _simulated(config.load(chip_name), "gpt2", phase, 1, 128)
    return gen


def h100_rb1024():
    """h100-like-hbm3 with 1 KiB DMA requests."""
    d = config.to_dict(config.load("h100-like-hbm3"))
    d["cores"]["dma"]["request_bytes"] = 1024
    d["name"] = "h100-like-hbm3-rb1024"
    return config.from_dict(d)


def _llama_layer():
    from tilesim.programs import codegen, graph, models

    cfg = h100_rb1024()
    spec = models.resolve_model("llama-3-8b")
    g = graph.model_graph(spec, "decode", 1, 1024)
    nodes = [g.nodes[n] for n in g.nodes if g.nodes[n]["layer"] == 0]
    comp = codegen.compile_nodes(spec, nodes, cfg, "decode", 1, 1024, name="layer0")
    yield "layer0", comp.program, cfg


CASES = {
    "examples": _examples,
    "tile_loop": _tile_loop,
    "gemm_multicore": _gemm_multicore,
    "tiny_models": _tiny_models,
    "gpt2_tpu": _gpt2("tpu-v4i-like"),
    "gpt2_h100": _gpt2("h100-like-hbm3"),
    "gpt2_prefill_tpu": _gpt2("tpu-v4i-like", "prefill"),
    "llama_layer": _llama_layer,
}


def digest(stats: chip.RunStats) -> bytes:
    """The bytes that must not change: every timestamp and counter of one run."""
    h = hashlib.sha256()
    for a in (stats.t_issue, stats.t_start, stats.t_end, stats.engine_busy,
              stats.noc_link_flits, stats.sram_read_bytes, stats.sram_write_bytes,
              stats.dram.get("per_channel", np.zeros(0, np.int64))):
        h.update(np.ascontiguousarray(a, np.int64).tobytes())
    # (a zero multicast count is left out, so hashes saved before multicast loads still match)
    reqs = sorted((k, v) for k, v in stats.dma_requests.items() if v or k != "multicast")
    scalars = (stats.cycles, reqs, stats.dram_read_bytes,
               stats.dram_write_bytes, stats.noc_flit_hops, stats.noc_byte_hops,
               stats.noc_injected_flits, stats.noc_ejected_flits,
               sorted(stats.dram.get("counters", {}).items()), stats.dram.get("end_dram_cycle"),
               sorted(stats.energy_pj.items()))
    h.update(repr(scalars).encode())
    return h.digest()


def run_case(name: str, repeats: int) -> dict:
    """Compile the case's programs, run them ``repeats`` times; hash, events, wall seconds."""
    runs = list(CASES[name]())
    walls, first = [], None
    for _ in range(repeats):
        h = hashlib.sha256()
        events: dict[str, int] = {}
        t0 = time.perf_counter()
        stats = [chip.run(prog, cfg, validate=False) for _, prog, cfg in runs]
        walls.append(time.perf_counter() - t0)
        for (label, _, _), s in zip(runs, stats):
            h.update(label.encode())
            h.update(digest(s))
            for k, v in s.events.items():
                events[k] = events.get(k, 0) + v
        if first is not None and h.hexdigest() != first:
            raise SystemExit(f"{name}: two runs differ: the model is not deterministic")
        first = h.hexdigest()
    return {"hash": first, "events": events, "wall_s": statistics.median(walls),
            "walls_s": walls}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--save", metavar="FILE.json")
    p.add_argument("--check", metavar="FILE.json")
    args = p.parse_args(argv)
    ref = json.loads(Path(args.check).read_text()) if args.check else {}
    out, bad = {}, []
    chip.run(*[(prog, cfg) for _, prog, cfg in _examples()][0])   # compile or load the cache
    for name in args.cases:
        r = out[name] = run_case(name, args.repeats)
        verdict = ""
        if name in ref:
            same = ref[name]["hash"] == r["hash"]
            verdict = "  same" if same else "  DIFFERS"
            if not same:
                bad.append(name)
        ev = r["events"]
        total = sum(v for k, v in ev.items() if k != "stale")
        print(f"{name:16s} {r['hash'][:16]}{verdict}  {r['wall_s']:7.2f} s  events {total:>10d}  "
              + " ".join(f"{k} {v}" for k, v in ev.items() if v), flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=1) + "\n")
    if bad:
        print("differ:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
