"""tilesim.sweep and `tilesim sweep`: expansion, hashing, the resumable store, Dask, the report.

Every run but one uses the fake evaluator in tests/fake_evaluator.py (a fast roofline with the
``tilesim.simulate`` signature), so these tests check the sweep machinery, not the simulator;
the one (slow) kills and resumes a sweep of the real simulator (REAL_GRID).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import fake_evaluator
from tilesim import __version__, config, sweep
from tilesim.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAKE = "tests.fake_evaluator:simulate"

GRID = """\
base: blackhole-like-gddr6
workloads:
  model: llama-3-8b
  phase: [prefill, decode]
  batch: 1
  context: 512
parameters:
  cores.systolic.rows: [16, 32, 48]          # 48 rows: the fake evaluator fails
  cores.sram.size_bytes: ["1 MiB", "2 MiB"]
  noc.link_width_bytes: {start: 32, stop: 64, factor: 2}
"""
"""3 x 2 x 2 chips x 2 workloads = 24 points, 8 of them failing."""


def write(tmp_path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load(tmp_path, text: str = GRID, **kw) -> sweep.SweepSpec:
    return sweep.load_sweep(write(tmp_path, text), evaluator=kw.pop("evaluator", FAKE))


@pytest.fixture
def fake_log(tmp_path, monkeypatch):
    """The fake evaluator appends each computed point's identity to this file."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("TILESIM_FAKE_LOG", str(log))
    monkeypatch.delenv("TILESIM_FAKE_SLEEP", raising=False)
    monkeypatch.delenv("TILESIM_FAKE_INTERRUPT_AT", raising=False)
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def ident_of(row: dict) -> str:
    w = row["workload"]
    return fake_evaluator.ident(row["config"], w["phase"], w["batch"], w["context"])


def db_rows(db) -> list[dict]:
    with sweep.Store(db, create=False) as s:
        return s.rows()


WALL_CLOCK = ("elapsed_s", "wall_seconds")
"""Keys that measure how long a point took on this machine: the sweep's own ``elapsed_s`` and
the real simulator's ``wall_seconds`` (in its result); nothing else may differ between runs."""


def table(db) -> list[dict]:
    """The report's rows without anything that depends on when or how long a point ran."""
    def strip(d):
        return {k: v for k, v in d.items() if k not in WALL_CLOCK}
    return [{k: strip(v) if k == "result" and v else v for k, v in strip(r).items()}
            for r in sweep.report(db)["rows"]]


def kill_sweep_part_way(path: Path, db: Path, args: list[str], *, at_least: int,
                        env: dict | None = None, timeout: float = 60.0) -> None:
    """Start `tilesim sweep PATH --db DB ARGS` in its own session and SIGKILL it, workers and
    all, once ``at_least`` points are committed to ``db`` (fails if it ends first)."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tilesim", "sweep", str(path), "--db",
                             str(db), *args],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        n = 0
        while n < at_least and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if db.exists():
                try:
                    with sqlite3.connect(db) as c:
                        n = c.execute("SELECT COUNT(*) FROM points").fetchone()[0]
                except sqlite3.OperationalError:
                    pass                                   # tables not created yet
        assert proc.poll() is None, proc.stderr.read().decode()
        assert n >= at_least, f"only {n} points recorded after {timeout} s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)                 # the sweep and its workers
        proc.wait()


# --------------------------------------------------------------------------------------------
# Expansion and hashing
# --------------------------------------------------------------------------------------------


def test_grid_expands_to_every_combination_in_order(tmp_path):
    spec = load(tmp_path)
    points = spec.points()
    assert spec.grid_size() == 12 and len(points) == 24
    combos = list(itertools.product([16, 32, 48], [2**20, 2**21], [32, 64]))
    workloads = [{"model": "llama-3-8b", "phase": ph, "batch": 1, "context": 512}
                 for ph in ("prefill", "decode")]
    want = [(dict(zip(("cores.systolic.rows", "cores.sram.size_bytes",
                       "noc.link_width_bytes"), c)), w) for c in combos for w in workloads]
    assert [(p.params, p.workload) for p in points] == want
    for p in points:
        assert p.error is None
        c = config.from_dict(p.config)            # the resolved config, overrides applied
        assert c.cores.systolic.rows == p.params["cores.systolic.rows"]
        assert c.cores.sram.size_bytes == p.params["cores.sram.size_bytes"]
        assert c.noc.link_width_bytes == p.params["noc.link_width_bytes"]
        assert c.cores.count == 140 and c.memory.standard == "gddr6"   # the rest is the base
        assert p.config == config.to_dict(c, full=True)


def test_keys_are_sha256_of_the_resolved_point_stable_and_distinct(tmp_path):
    points = load(tmp_path).points()
    keys = [p.key for p in points]
    assert len(set(keys)) == len(keys)
    # the key is sha256 of the canonical JSON of config + workload (model spec) + version
    p = points[0]
    ident = {"config": p.config, "workload": {"phase": "prefill", "batch": 1, "context": 512,
                                              "all_layers": False, "ignore_capacity": False,
                                              "model": p.model},
             "tilesim": __version__, "evaluator": FAKE}
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    assert p.key == hashlib.sha256(text.encode()).hexdigest()
    # the same points written differently (sizes in bytes, the base as a path, another
    # order of keys) hash the same
    other = GRID.replace('["1 MiB", "2 MiB"]', "[1048576, 2097152]").replace(
        "base: blackhole-like-gddr6", f"base: {ROOT / 'configs/blackhole-like-gddr6.yaml'}")
    assert [q.key for q in load(tmp_path, other).points()] == keys
    # and in another interpreter with another hash seed
    code = ("from tilesim import sweep; print(' '.join(p.key for p in sweep.load_sweep("
            f"{str(tmp_path / 's.yaml')!r}, evaluator={FAKE!r}).points()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert out.stdout.split() == keys
    # another evaluator is another point (fake results never pass for real ones)
    assert load(tmp_path, evaluator="tests.fake_evaluator:ident").points()[0].key != p.key


def test_random_mode_samples_distinct_points_from_the_grid_by_seed(tmp_path):
    text = GRID + "mode: random\nseed: 7\nsamples: 5\n"
    a = load(tmp_path, text).assignments()
    assert len(a) == 5 and len({json.dumps(x, sort_keys=True) for x in a}) == 5
    grid = load(tmp_path).assignments()
    assert all(x in grid for x in a)
    assert load(tmp_path, text).assignments() == a                       # seeded
    assert load(tmp_path, text.replace("seed: 7", "seed: 8")).assignments() != a
    assert len(load(tmp_path, text).points()) == 10                      # x 2 workloads


def test_shorthands_channels_and_datatypes(tmp_path):
    text = """\
base: blackhole-like-hbm3
workloads: {model: llama-3-8b, phase: decode, batch: 1, context: 128}
parameters:
  memory.channels: [32, 64, 48]
  datatypes: [bf16, int8]
"""
    points = load(tmp_path, text).points()
    assert len(points) == 6
    by = {(p.params["memory.channels"], p.params["datatypes"]): p for p in points}
    assert by[64, "bf16"].config["memory"]["devices"] == 2           # hbm3: 32 per stack
    s = by[32, "int8"].config["cores"]["systolic"]
    assert (s["input_dtype"], s["weight_dtype"], s["acc_dtype"]) == ("int8", "int8", "int32")
    assert by[32, "bf16"].config["cores"]["systolic"]["acc_dtype"] == "fp32"
    assert by[32, "int8"].model["weight_dtype"] == "int8" == by[32, "int8"].workload["act_dtype"]
    assert "multiple of 32" in by[48, "bf16"].error                 # invalid, not a crash


def test_entries_of_mapping_keys(tmp_path):
    text = """\
base: teach-4x4
workloads: {model: gpt2, phase: decode, batch: 1, context: 16}
parameters:
  energy.overrides.mac_int8_pj: [0.1, 0.2]
  cores.vector.ops.exp: [{elems_per_lane_per_cycle: 1, latency_cycles: 4}]
"""
    pts = load(tmp_path, text).points()
    assert [p.config["energy"]["overrides"]["mac_int8_pj"] for p in pts] == [0.1, 0.2]
    assert all(p.config["cores"]["vector"]["ops"]["exp"]["latency_cycles"] == 4 for p in pts)
    with pytest.raises(config.ConfigError, match=r"s.yaml: parameters.energy.overrides."
                                                  r"mac_int9_pj: unknown key .*'mac_int8_pj'"):
        load(tmp_path, text.replace("mac_int8_pj", "mac_int9_pj"))


def test_range_values_and_whole_blocks(tmp_path):
    text = """\
base: blackhole-like-gddr6
workloads: {model: gpt2, phase: [prefill], batch: [1], context: 64}
parameters:
  cores.sram.size_bytes: {start: 1 MiB, stop: 2 MiB, step: 512 KiB}
  memory:
    - {standard: gddr6, devices: 8, data_rate_gbps: 16.0, capacity_bytes: 32 GiB}
    - {standard: hbm3, devices: 2, capacity_bytes: 32 GiB}
"""
    spec = load(tmp_path, text)
    assert spec.parameters[0].values == (2**20, 3 * 2**19, 2**21)
    pts = spec.points()
    assert len(pts) == 6 and not any(p.error for p in pts)
    assert {p.config["memory"]["standard"] for p in pts} == {"gddr6", "hbm3"}


def test_shipped_example_sweep_has_24_valid_points():
    spec = sweep.load_sweep(ROOT / "configs/sweeps/blackhole-design-space.yaml",
                            evaluator=FAKE)
    points = spec.points()
    assert len(points) == 24 and not any(p.error for p in points)
    hbm = [p for p in points if p.config["memory"]["standard"] == "hbm3"]
    assert len(hbm) == 12
    assert config.from_dict(hbm[0].config).memory == config.load("blackhole-like-hbm3").memory


# --------------------------------------------------------------------------------------------
# Running: re-runs, failures, invalid points, Dask, interruption
# --------------------------------------------------------------------------------------------


def test_rerun_runs_nothing_and_a_failing_point_is_recorded(tmp_path, fake_log):
    spec, db = load(tmp_path), tmp_path / "s.db"
    st = sweep.run_sweep(spec, db, workers=0)
    assert (st.points, st.ran, st.ok, st.failed, st.already) == (24, 24, 16, 8, 0)
    rows = db_rows(db)
    assert len(rows) == 24 and sorted(calls(fake_log)) == sorted(ident_of(r) for r in rows)
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["params"]["cores.systolic.rows"] for r in failed} == {fake_evaluator.FAIL_ROWS}
    assert all("no tiling for a 48-row array" in r["error"] for r in failed)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["result"]["tokens_per_s"] > 0 and r["error"] is None for r in ok)

    n = len(calls(fake_log))
    st = sweep.run_sweep(spec, db, workers=0)
    assert (st.ran, st.already) == (0, 24) and len(calls(fake_log)) == n       # nothing ran
    st = sweep.run_sweep(spec, db, workers=0, retry_failed=True)             # only the failed
    assert (st.ran, st.failed, st.already) == (8, 8, 16) and len(calls(fake_log)) == n + 8
    assert len(db_rows(db)) == 24


def test_points_run_without_the_evaluators_own_progress_bar(tmp_path, fake_log, monkeypatch):
    """tilesim.simulate draws a bar on stderr when it is a terminal; run from a terminal, a
    sweep's points (in this process, or in local workers that share its stderr) would write
    over the sweep's own bar. evaluate_point asks every evaluator for progress=False."""
    seen = []
    real = fake_evaluator.simulate

    def spy(*args, **kw):
        seen.append(kw.get("progress", "not given"))
        return real(*args, **kw)

    monkeypatch.setattr(fake_evaluator, "simulate", spy)
    sweep.run_sweep(load(tmp_path), tmp_path / "s.db", workers=0)
    assert seen == [False] * 24


def test_invalid_combination_is_recorded_without_running(tmp_path, fake_log):
    text = """\
base: blackhole-like-gddr6
workloads: {model: gpt2, phase: decode, batch: 1, context: 64}
parameters:
  cores.sram.size_bytes: ["1 MiB", "1.5 MiB"]
  cores.sram.banks: [16, 48]          # 1 MiB is no multiple of 48 x 64 B
"""
    db = tmp_path / "s.db"
    st = sweep.run_sweep(load(tmp_path, text), db, workers=0)
    assert (st.invalid, st.ran, st.ok) == (1, 3, 3) and len(calls(fake_log)) == 3
    bad = [r for r in db_rows(db) if r["status"] == "invalid"]
    assert len(bad) == 1 and bad[0]["params"] == {"cores.sram.size_bytes": 2**20,
                                                  "cores.sram.banks": 48}
    assert bad[0]["error"].startswith("cores.sram.size_bytes: 1048576 is not allowed (a "
                                      "multiple of banks x bank_width_bytes = 3072)")
    assert sweep.run_sweep(load(tmp_path, text), db, workers=0).ran == 0


def test_local_dask_cluster_runs_24_points_like_a_serial_run(tmp_path, fake_log, capsys):
    from distributed import Client, LocalCluster

    spec = load(tmp_path)
    seen = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        st = sweep.run_sweep(spec, tmp_path / "dask.db", client=client,
                             on_result=lambda p, out: seen.append(p.key))
        assert client.status == "running"                      # a given client stays open
        # the CLI on the same cluster through its scheduler address
        (tmp_path / "s.yaml").write_text(GRID + f"evaluator: {FAKE}\n")   # set in the file
        assert main(["sweep", str(tmp_path / "s.yaml"), "--db", str(tmp_path / "cli.db"),
                     "--scheduler", cluster.scheduler_address]) == 0
    assert (st.ran, st.ok, st.failed, st.lost) == (24, 16, 8, 0)
    assert sorted(seen) == sorted(p.key for p in spec.points())
    sweep.run_sweep(spec, tmp_path / "serial.db", workers=0)
    assert table(tmp_path / "dask.db") == table(tmp_path / "serial.db") == table(
        tmp_path / "cli.db")


def test_interrupted_sweep_resumes_without_recomputing_or_losing(tmp_path, fake_log):
    """Ctrl-C (a KeyboardInterrupt in this process) after 5 results, on a Dask cluster of
    threads; then the evaluator itself interrupted, without Dask; each time a re-run
    finishes the rest and the table equals an uninterrupted run's."""
    spec, db = load(tmp_path), tmp_path / "s.db"
    got = []

    def interrupt_after_5(p, out):
        got.append(p.key)
        if len(got) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, db, workers=2, processes=False, on_result=interrupt_after_5)
    first = db_rows(db)
    assert sorted(r["key"] for r in first) == sorted(got)                 # nothing lost
    done_before = {ident_of(r) for r in first}
    n = len(calls(fake_log))
    st = sweep.run_sweep(spec, db, workers=2, processes=False)
    assert st.already == 5 and st.ran == 19
    assert not done_before & set(calls(fake_log)[n:])                     # none recomputed
    keys = [r["key"] for r in db_rows(db)]
    assert len(keys) == len(set(keys)) == 24
    sweep.run_sweep(spec, tmp_path / "ref.db", workers=0)
    assert table(db) == table(tmp_path / "ref.db")

    # the evaluator raises KeyboardInterrupt on the 4th point of a fresh serial run
    db2 = tmp_path / "s2.db"
    fake_log.unlink()
    os.environ["TILESIM_FAKE_INTERRUPT_AT"] = "3"
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, db2, workers=0)
    del os.environ["TILESIM_FAKE_INTERRUPT_AT"]
    assert len(db_rows(db2)) == 3
    assert sweep.run_sweep(spec, db2, workers=0).ran == 21
    assert table(db2) == table(tmp_path / "ref.db")


def test_killed_sweep_process_resumes(tmp_path, fake_log):
    """`tilesim sweep` on a local cluster of worker processes, killed (SIGKILL, workers and
    all) part way; the re-run computes only what was not recorded."""
    path = write(tmp_path, GRID)
    db = tmp_path / "s.db"
    kill_sweep_part_way(path, db, ["--workers", "2", "--evaluator", FAKE], at_least=6,
                        env={"TILESIM_FAKE_SLEEP": "0.25"})
    first = db_rows(db)
    assert 6 <= len(first) < 24
    done_before = {ident_of(r) for r in first}
    n_calls = len(calls(fake_log))
    assert main(["sweep", str(path), "--db", str(db), "--workers", "0", "--evaluator",
                 FAKE]) == 0
    assert not done_before & set(calls(fake_log)[n_calls:])
    keys = [r["key"] for r in db_rows(db)]
    assert len(keys) == len(set(keys)) == 24
    sweep.run_sweep(load(tmp_path), tmp_path / "ref.db", workers=0)
    assert table(db) == table(tmp_path / "ref.db")


def test_dead_workers(tmp_path, fake_log, monkeypatch):
    """On a local cluster of processes: a worker that dies once has its point run again on
    another; a point that kills every worker it is given is recorded as failed."""
    import dask

    text = GRID.replace("[16, 32, 48]", "[16, 48]").replace('["1 MiB", "2 MiB"]', "[1 MiB]")
    text = text.replace("{start: 32, stop: 64, factor: 2}", "[64]")
    monkeypatch.setenv("TILESIM_FAKE_CRASH", f"once:{tmp_path / 'crashed'},rows:48")
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        st = sweep.run_sweep(load(tmp_path, text), tmp_path / "s.db", workers=2)
    assert (tmp_path / "crashed").exists()
    assert (st.ran, st.ok, st.failed, st.lost) == (4, 2, 2, 0)
    failed = [r for r in db_rows(tmp_path / "s.db") if r["status"] == "failed"]
    assert {r["params"]["cores.systolic.rows"] for r in failed} == {48}
    assert all(r["error"].startswith("the point killed its worker each time it ran")
               for r in failed)


REAL_GRID = """\
base: tpu-v4i-like
workloads:
  model: gpt2
  phase: [prefill, decode]
  batch: 1
  context: 64
parameters:
  memory.data_rate_gbps: [1.0, 1.6, 2.4]     # HBM2's whole range of pin rates
  cores.sram.size_bytes: [1 MiB, 36 MiB]
  noc.link_width_bytes: [128, 512]
"""
"""For the real simulator: 3 x 2 x 2 chips x 2 workloads = 24 points of about 0.6 s each warm
(gpt2 on the 4-core TPU-v4i-like chip, a short context); every one of them valid and ok."""


def raw_rows(db) -> dict[str, tuple]:
    """key -> (finished_at, elapsed_s, result text) as stored: what a recomputation rewrites."""
    with sqlite3.connect(db) as c:
        return {k: rest for k, *rest in c.execute(
            "SELECT key, finished_at, elapsed_s, result FROM points")}


@pytest.mark.slow
def test_real_simulator_sweep_killed_and_resumed_on_dask(tmp_path):
    """Issue 7 with the default evaluator, tilesim.simulate: a 24-point sweep finishes on a
    local Dask cluster; `tilesim sweep` killed part way (SIGKILL, workers and all) and resumed
    on another cluster evaluates exactly the points not recorded, and its table equals the
    uninterrupted run's, every cycle count bit for bit. Then the physics of the table."""
    from distributed import Client, LocalCluster, get_task_stream

    from tilesim.programs.models import ModelSpec

    path = write(tmp_path, REAL_GRID)
    spec = sweep.load_sweep(path)
    assert spec.evaluator == sweep.DEFAULT_EVALUATOR == "tilesim:simulate"
    points = spec.points()
    keys = {p.key for p in points}
    assert len(points) == len(keys) == 24 and not any(p.error for p in points)

    # the uninterrupted run, on run_sweep's own local cluster of 2 worker processes (it also
    # fills the numba cache that the killed run's workers then load)
    ref = tmp_path / "ref.db"
    st = sweep.run_sweep(spec, ref, workers=2)
    assert (st.points, st.ran, st.ok, st.failed, st.lost, st.already) == (24, 24, 24, 0, 0, 0)

    # the CLI on 2 workers, killed once 4 points are recorded
    db = tmp_path / "s.db"
    kill_sweep_part_way(path, db, ["--workers", "2"], at_least=4, timeout=300)
    first = raw_rows(db)
    assert 4 <= len(first) < 24 and set(first) <= keys
    assert all(r["status"] == "ok" for r in db_rows(db))

    # the re-run on a cluster of our own, whose task stream lists every evaluation the
    # workers ran (independent of the sweep's own counts)
    ran = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with get_task_stream(client) as ts:
            st = sweep.run_sweep(spec, db, client=client,
                                 on_result=lambda p, out: ran.append(p.key))
        evaluated = [t for t in ts.data if str(t["key"]).startswith("evaluate_point-")]
    todo = keys - set(first)
    assert (st.already, st.ran, st.ok, st.lost) == (len(first), len(todo), len(todo), 0)
    assert len(evaluated) == len(ran) == len(todo) and set(ran) == todo   # none recomputed
    after = raw_rows(db)
    assert set(after) == keys                                               # none lost
    assert {k: after[k] for k in first} == first       # the first rows untouched, as stored
    assert table(db) == table(ref)                      # every number, cycles bit for bit

    # the physics of the table: no point moves DRAM bytes faster than HBM2's pins allow (2
    # stacks x 1024 bits x the pin rate); wider NoC links never cost cycles, nor does more DRAM
    # bandwidth beyond 0.5%: with 128 B links the step is NoC-bound (1.6 and 2.4 Gb/s within
    # 0.3%), and the faster DRAM's other order of arrivals at the FCFS links can cost a little
    # (decode 1,218,213 cycles at 2.4 against 1,215,252 at 1.6, the same plans: a greedy
    # schedule's anomaly, measured 2026-12-03); a decode step reads every weight matrix from
    # DRAM and, so bound, runs well over 1.5x faster at 2.4 Gb/s than at 1.0 when the NoC is
    # wide (2.4x at the limit)
    gpt2 = ModelSpec(**points[0].model)
    # every parameter but the position table (bf16), of which a step reads one row
    weights = gpt2.weight_bytes() - gpt2.max_context * gpt2.d_model * 2
    clock_hz = spec.base_config["clock_ghz"] * 1e9
    res = {}
    for r in table(ref):
        assert r["status"] == "ok", r["error"]
        p, s = r["params"], r["result"]
        rate = p["memory.data_rate_gbps"]
        res[s["phase"], rate, p["cores.sram.size_bytes"], p["noc.link_width_bytes"]] = s
        moved = s["dram_read_bytes"] + s["dram_write_bytes"]
        assert moved <= 2 * 1024 * rate * 1e9 / 8 * s["cycles"] / clock_hz
        if s["phase"] == "decode":
            assert s["dram_read_bytes"] >= weights
    assert len(res) == 24
    for (phase, rate, sram, link), s in res.items():
        for faster in (1.6, 2.4):
            if faster > rate:
                assert res[phase, faster, sram, link]["cycles"] <= 1.005 * s["cycles"]
        if link == 128:
            assert res[phase, rate, sram, 512]["cycles"] <= s["cycles"]
    for sram in (2**20, 36 * 2**20):
        assert res["decode", 2.4, sram, 512]["cycles"] * 1.5 < res["decode", 1.0, sram, 512][
            "cycles"]


# --------------------------------------------------------------------------------------------
# Pareto fronts and the report
# --------------------------------------------------------------------------------------------


def brute_front(xs, ys) -> set:
    return {i for i in range(len(xs))
            if not any(xs[j] >= xs[i] and ys[j] <= ys[i] and (xs[j] > xs[i] or ys[j] < ys[i])
                       for j in range(len(xs)))}


def test_routing_reaches_the_simulator_only_when_given(tmp_path):
    """A workload's ``routing`` is part of its label (so of the point's key) and is passed to
    the real simulator: a MoE decode of 2 sequences (4 choices of 6 experts) reads 3 experts'
    weights with random routing, 4 balanced (a token each), so balanced reads more; without the
    key the evaluator gets no routing argument (the fake one takes none)."""
    import dataclasses

    from tests.programs.test_codegen import tiny_chip
    from tests.programs.test_models import SPECS
    chip = config.to_dict(tiny_chip("bf16"), full=True)
    model = dataclasses.asdict(SPECS["moe"])
    read = {}
    for routing in ("random", "balanced"):
        rec = sweep.evaluate_point("tilesim:simulate", chip, model,
                                   {"phase": "decode", "batch": 2, "context": 8,
                                    "routing": routing})
        assert rec["status"] == "ok", rec["error"]
        read[routing] = rec["result"]["dram_read_bytes"]
        assert rec["result"]["moe_routing"] == routing
    assert read["balanced"] > read["random"]
    rec = sweep.evaluate_point(FAKE, chip, model, {"phase": "decode", "batch": 2, "context": 8})
    assert rec["status"] == "ok", rec["error"]
    spec = load(tmp_path, GRID.replace("batch: 1", "batch: 1\n  routing: balanced"))
    assert all(w.label()["routing"] == "balanced" for w in spec.workloads)


def test_pareto_front_matches_brute_force():
    rng = random.Random(3)
    for trial in range(300):
        n = rng.randint(0, 40)
        hi = rng.choice([3, 10, 1000])                 # small ranges make many ties
        xs = [rng.randint(0, hi) * 1.5 for _ in range(n)]
        ys = [rng.randint(0, hi) for _ in range(n)]
        front = sweep.pareto_front(xs, ys)
        assert set(front) == brute_front(xs, ys) and len(front) == len(set(front))
        assert [xs[i] for i in front] == sorted((xs[i] for i in front), reverse=True)


def test_report_fronts_are_the_brute_force_fronts(tmp_path, fake_log):
    db = tmp_path / "s.db"
    sweep.run_sweep(load(tmp_path), db, workers=0)
    rep = sweep.report(db)
    assert rep["counts"] == {"ok": 16, "failed": 8, "invalid": 0}
    assert rep["parameters"] == ["cores.systolic.rows", "cores.sram.size_bytes",
                                 "noc.link_width_bytes"]
    assert len(rep["fronts"]) == 2
    for wl, fronts in rep["fronts"].items():
        ok = [r for r in rep["rows"] if r["workload"] == wl and r["status"] == "ok"]
        assert len(ok) == 8
        for name, (col, _) in sweep.OBJECTIVES.items():
            want = brute_front([r["tokens_per_s"] for r in ok], [r[col] for r in ok])
            assert set(fronts[name]) == {ok[i]["key"] for i in want}, (wl, name)
    for r in rep["rows"]:                    # 32 GiB of GDDR6; 140 cores of rows x 32 + SRAM
        assert r["memory_cost_usd"] == pytest.approx(32 * 3.4)
        assert r["area_proxy"] == 140 * (r["params"]["cores.systolic.rows"] * 32
                                         + r["params"]["cores.sram.size_bytes"])


def test_cli_runs_and_reports(tmp_path, fake_log, capsys):
    path = write(tmp_path, GRID)
    assert main(["sweep", str(path), "--workers", "0", "--evaluator", FAKE]) == 0
    out, err = capsys.readouterr()
    assert "24 points: 0 already recorded, 24 ran (16 ok, 8 failed), 0 invalid" in out
    assert (tmp_path / "s.db").exists() and not err                   # no bar off a terminal
    assert main(["sweep", str(path), "--workers", "0", "--evaluator", FAKE, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["ran"], d["already"]) == (0, 24)
    assert main(["sweep", str(path), "--evaluator", FAKE, "--dry-run"]) == 0
    assert "24 recorded" in capsys.readouterr().out

    out_dir = tmp_path / "rep"
    assert main(["sweep", "--report", str(tmp_path / "s.db"), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "llama-3-8b decode b1 s512" in out and "llama-3-8b prefill b1 s512" in out
    assert "failed: fake: no tiling for a 48-row array" in out
    assert "rows" in out and "size_bytes" in out and "2 MiB" in out and "E" in out
    pngs = sorted(out_dir.glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert len((out_dir / "points.csv").read_text().splitlines()) == 25
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [p.name for p in pngs] + ["points.csv", "report.json"])      # no temporary leftovers
    assert main(["sweep", "--report", str(tmp_path / "s.db"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["rows"]) == 24 and set(d["fronts"]) == {"llama-3-8b decode b1 s512",
                                                         "llama-3-8b prefill b1 s512"}


# --------------------------------------------------------------------------------------------
# Bad sweep files and arguments: one line, the key named, nothing run
# --------------------------------------------------------------------------------------------

BAD = [
    ("bas: x\n", ["s.yaml: bas: unknown key", "did you mean 'base'?"]),
    (GRID.replace("cores.systolic.rows:", "cores.systolic.row:"),
     ["s.yaml: parameters.cores.systolic.row: unknown key", "did you mean 'rows'?"]),
    (GRID.replace("cores.systolic.rows:", "cores.sytolic.rows:"),
     ["parameters.cores.sytolic: unknown key", "did you mean 'systolic'?"]),
    (GRID.replace("cores.systolic.rows:", "memory.chanels:"),
     ["parameters.memory.chanels: unknown key", "did you mean 'channels'?"]),
    (GRID.replace("[16, 32, 48]", "[]"),
     ["parameters.cores.systolic.rows: [] is not allowed (a non-empty list"]),
    (GRID.replace("{start: 32, stop: 64, factor: 2}", "{start: 64, stop: 32, step: 8}"),
     ["parameters.noc.link_width_bytes:", "a non-empty range: start 64 is above stop 32"]),
    (GRID.replace("[16, 32, 48]", "[16, 0]"),
     ["parameters.cores.systolic.rows[1]: 0 is not allowed (integer from 1 to 4096)"]),
    (GRID.replace('"2 MiB"', '"2 MB of sram"'),
     ["parameters.cores.sram.size_bytes[1]: '2 MB of sram' is not allowed"]),
    (GRID + "  memory.standard: [gddr6, hbm4]\n",
     ["parameters.memory.standard[1]: 'hbm4' is not allowed", "did you mean 'hbm3'?"]),
    (GRID.replace("[16, 32, 48]", "[16, 16]"),
     ["parameters.cores.systolic.rows[1]: 16 is not allowed (each value once)"]),
    (GRID.replace("cores.systolic.rows:", "cores.systolic:"),
     ["parameters.cores.systolic[0]: 16 is not allowed (a mapping with keys rows"]),
    (GRID.replace("cores.systolic.rows:", "cores.count.x:"),
     ["s.yaml: parameters.cores.count.x: not a config key path (cores.count holds a value"]),
    (GRID + "seed: 1\n", ["s.yaml: seed: 1 is not allowed (only with mode: random)"]),
    (GRID + "mode: random\nseed: 1\nsamples: 13\n",
     ["s.yaml: samples: 13 is not allowed (at most 12"]),
    (GRID + "mode: random\nsamples: 3\n", ["s.yaml: seed: required key is missing"]),
    (GRID + "mode: grd\n", ["s.yaml: mode: 'grd' is not allowed", "did you mean 'grid'?"]),
    (GRID.replace("model: llama-3-8b", "model: llama-3-9b"),
     ["s.yaml: workloads.model: llama-3-9b: no such model preset", "did you mean 'llama-3-8b'?"]),
    (GRID.replace("phase: [prefill, decode]", "phase: [prefill, decod]"),
     ["s.yaml: workloads.phase[1]: 'decod' is not allowed", "did you mean 'decode'?"]),
    (GRID.replace("context: 512", "context: 100000"),
     ["s.yaml: workloads.context: context 100000 is longer than llama-3-8b allows"]),
    (GRID.replace("batch: 1", "btch: 1"), ["workloads.btch: unknown key", "'batch'"]),
    (GRID.replace("batch: 1", "batch: 1\n  routing: skewed"),
     ["s.yaml: workloads.routing: 'skewed' is not allowed (one of random, balanced"]),
    (GRID.replace("base: blackhole-like-gddr6", "base: blackhole-like-gdr6"),
     ["s.yaml: base: blackhole-like-gdr6: no such file or preset",
      "did you mean 'blackhole-like-gddr6'?"]),
    (GRID.replace("base: blackhole-like-gddr6\n", ""), ["s.yaml: base: required key"]),
    (GRID.replace("cores.systolic.rows: [16, 32, 48]", "datatypes: [int8]").replace(
        "context: 512", "context: 512\n  weight_dtype: int8"),
     ["workloads.weight_dtype: 'int8' is not allowed", "the parameter 'datatypes' sets it"]),
    (GRID.replace("cores.systolic.rows: [16, 32, 48]", "cores.sram.banks: [48]"),
     # no size above is a multiple of 48 banks x 64 B: every point fails the config
     ["s.yaml: parameters: every point is an invalid config", "cores.sram.size_bytes"]),
    ("base: [\n", ["s.yaml: line", "not valid YAML"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=range(len(BAD)))
def test_bad_sweep_files_are_one_line_errors_and_nothing_runs(tmp_path, fake_log, capsys,
                                                              text, needles):
    path = write(tmp_path, text)
    code = main(["sweep", str(path), "--workers", "0", "--evaluator", FAKE])
    out, err = capsys.readouterr()
    assert code == 2 and not out
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    assert not calls(fake_log)
    assert not (tmp_path / "s.db").exists() or not db_rows(tmp_path / "s.db")


@pytest.mark.parametrize("argv,needle", [
    ([], "a sweep file to run"),
    (["--report", "nope.db"], "nope.db: no such sweep database"),
    (["s.yaml", "--report", "x.db"], "not both"),
    (["s.yaml", "--scheduler", "tcp://x:1", "--workers", "2"], "--workers: not used with"),
    (["s.yaml", "--workers", "-1"], "--workers: -1 is not allowed"),
    (["s.yaml", "--out", "d"], "--out: only with --report"),
    (["s.yaml", "--evaluator", "nosuchmodule:f"], "evaluator: 'nosuchmodule:f' cannot be"),
    (["s.yaml", "--evaluator", "tilesim"], "(module:function"),
])
def test_bad_arguments(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, GRID)
    (tmp_path / "x.db").write_bytes(b"")
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_report_refuses_a_database_that_is_not_a_sweep(tmp_path, capsys):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    assert main(["sweep", "--report", str(other)]) == 2
    assert "not a tilesim sweep database" in capsys.readouterr().err


def test_cli_interrupt_says_how_to_resume(tmp_path, fake_log, monkeypatch, capsys):
    path = write(tmp_path, GRID)
    monkeypatch.setenv("TILESIM_FAKE_INTERRUPT_AT", "3")
    assert main(["sweep", str(path), "--workers", "0", "--evaluator", FAKE]) == 130
    err = capsys.readouterr().err
    assert err == (f"interrupted: 3 points are recorded in {tmp_path / 's.db'}; run the same "
                   f"command again to resume\n")
    monkeypatch.delenv("TILESIM_FAKE_INTERRUPT_AT")
    assert main(["sweep", str(path), "--workers", "0", "--evaluator", FAKE, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["already"], d["ran"]) == (3, 21)
