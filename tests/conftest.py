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
