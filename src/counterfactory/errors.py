"""The project's exceptions.

Every error a user can cause is an :class:`InputError` (or a sibling) whose message is one line naming the
argument, the value received and what is allowed. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

from typing import Any


class CounterfactoryError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(CounterfactoryError, ValueError):
    """Bad user input: an image, mask, box, label, path or argument value."""


class ConfigError(CounterfactoryError, ValueError):
    """An invalid configuration value."""


class CheckpointError(CounterfactoryError):
    """A checkpoint or weights folder that is missing, incomplete or of another kind."""


class TrainingError(CounterfactoryError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint is kept."""


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def input_error(argument: str, value: Any, allowed: str, cls: type[CounterfactoryError] = InputError):
    """Build the house error: ``<argument>=<value>: <what is allowed>`` on one line."""
    return cls(f"{argument}={_short(value)}: {allowed}")
