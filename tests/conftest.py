"""Shared test set-up.

NUMBA_CACHE_DIR is pointed at .numba_cache/<hash of tilesim/**/*.py> *before* tilesim (and so
numba) is imported: numba's on-disk cache does not notice edits to jitted functions imported
from another file (numba#1833), so any source change must start a fresh cache.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "tilesim").rglob("*.py")):
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(ROOT / ".numba_cache" / _source_hash())
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

CONFIGS = ROOT / "configs"


@pytest.fixture
def teach_cfg():
    from tilesim import config
    return config.load("teach-4x4")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Under pytest-xdist (``-n N``), compile the chip's event loop here, once, before the
    workers start; they then load it from the cache. Otherwise every worker compiles the same
    functions at the same time: on a 2-core machine, 250 s in each against 111 s alone."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    cache = Path(os.environ["NUMBA_CACHE_DIR"])
    if not any(cache.rglob("_engine.chip_run-*.nbc")):
        config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"compiling the event loop once for the workers into {cache} (about 2 minutes, "
            f"on one CPU)")
    from tilesim import config as chip_config
    from tilesim.arch import chip
    from tilesim.isa import assemble
    from tilesim.programs.examples import path
    chip.run(assemble(path("gemm_double_buffered").read_text(), "warm-up"),
             chip_config.load("teach-4x4"))
