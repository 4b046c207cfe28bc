"""One settings object per concept, shared by config files, command-line flags and the Python API: a
command's flags are derived from the settings dataclass (its fields that carry a help text), never
declared a second time, and the settings are rebuilt from the parsed flags."""

from __future__ import annotations

import dataclasses
from typing import Any


def flag_fields(settings: type) -> list[tuple[str, Any, dataclasses.Field]]:
    """The fields of `settings` that are command-line flags (those with a help text), for `make_dataclass`."""
    return [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f in dataclasses.fields(settings)
        if "help" in f.metadata
    ]


def with_flags(name: str, command: type, settings: type) -> type:
    """Dataclass `name`: `command`'s own fields followed by the flags of `settings` (for `HfArgumentParser`),
    documented and placed as `command`."""
    derived = dataclasses.make_dataclass(name, flag_fields(settings), bases=(command,))
    derived.__module__, derived.__doc__ = command.__module__, command.__doc__
    derived.__qualname__ = name
    return derived


def settings_from(flags: Any, settings: type, **overrides: Any) -> Any:
    """`settings` built from parsed `flags` (its flag fields) and `overrides` (the rest)."""
    values = {name: getattr(flags, name) for name, _, _ in flag_fields(settings)}
    return settings(**{**values, **overrides})
