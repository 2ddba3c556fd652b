"""Writing to Broadcaster's log; the host tags each line with the publisher's name.

``print()`` works too (stdout goes to the log at ``info``, stderr at ``warn``), but these
let the operator filter by level with ``RUST_LOG=broadcaster::guest=debug``.
"""

from wit_world.imports import log as _raw

Level = _raw.Level


def trace(message: str) -> None:
    """Logs at ``trace``."""
    _raw.log(Level.TRACE, str(message))


def debug(message: str) -> None:
    """Logs at ``debug``."""
    _raw.log(Level.DEBUG, str(message))


def info(message: str) -> None:
    """Logs at ``info``."""
    _raw.log(Level.INFO, str(message))


def warn(message: str) -> None:
    """Logs at ``warn``."""
    _raw.log(Level.WARN, str(message))


def error(message: str) -> None:
    """Logs at ``error``."""
    _raw.log(Level.ERROR, str(message))
