"""Validators for the limits every program takes from flags or its caller.

One rule for all of them (protocol.md §7.1): a count is an integer of at least 1, a
duration a positive, finite number of seconds. Zero, negative, NaN and infinite
durations are refused rather than read as "no deadline".
"""

from __future__ import annotations

import math

from ._errors import ConfigError

__all__ = ["positive_count", "positive_seconds"]


def positive_count(name: str, value: object) -> int:
    """``value`` if it is an integer (not a bool) of at least 1, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}")
    return value


def positive_seconds(name: str, value: object) -> float:
    """``value`` as float seconds if it is a positive, finite number, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 < value < math.inf:  # NaN fails this too
        raise ConfigError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)
