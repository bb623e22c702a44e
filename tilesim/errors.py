"""The exceptions tilesim raises for bad input.

Every user mistake (a config key, an assembly line, a CLI argument, a program that cannot run)
becomes one of these, with a message that fits on one line and names where the mistake is: the
file, the key path or line, the value and what is allowed. The CLI prints ``str(error)`` and
exits with status 2; it never shows a traceback for them.
"""
from __future__ import annotations


class TilesimError(Exception):
    """Base class: a one-line, user-facing explanation of bad input."""

    def __init__(self, message: str):
        # One line, always: a multi-line message would break the CLI contract.
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(TilesimError):
    """A chip, sweep or model configuration is invalid (names file and key path)."""


class AsmError(TilesimError):
    """Tile assembly text cannot be assembled (names file and line)."""


class ProgramError(TilesimError):
    """A program breaks a static rule (validator) or a run-time rule (simulator)."""


class InputError(TilesimError):
    """Any other user input (CLI arguments, API arguments) is out of range or malformed."""


def location(source: str | None, path: str) -> str:
    """'file: key.path' or just 'key.path' when there is no file."""
    if source:
        return f"{source}: {path}" if path else str(source)
    return path or "<config>"
