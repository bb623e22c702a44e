"""tilesim: a cycle-level simulator of AI inference accelerators.

A chip is described in YAML (tilesim.config), programs are tile instructions (tilesim.isa), the
hardware models live in tilesim.arch and the compiler from transformers to programs in
tilesim.programs. See DESIGN.md for the flow of a run.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("tilesim")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from tilesim.errors import AsmError, ConfigError, InputError, ProgramError, TilesimError



def simulate(chip, model, phase="decode", batch=1, context=1024, **options):
    """Simulate one forward step of ``model`` on ``chip`` (see :func:`tilesim.step.simulate`)."""
    from tilesim.step import simulate as _simulate
    return _simulate(chip, model, phase, batch, context, **options)


__all__ = ["__version__", "simulate", "TilesimError", "ConfigError", "AsmError", "ProgramError", "InputError"]
