"""The bench groups: one module each, with ``Params`` (full run), ``QUICK`` (small N) and ``run``."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from types import ModuleType

#: Every group, in the order ``list`` and ``report`` show them.
NAMES = ("decode", "build", "forward", "memory", "store_write", "build_timeline", "plan_memory",
         "stacks", "query", "transport", "server_rss", "perturb_victim", "catalog", "explorer", "faiss_kinds", "redis",
         "redis_scale", "ray", "rehearsal")  # fmt: skip


class UnknownGroup(KeyError):
    """A group name that is not in :data:`NAMES`."""


def load(name: str) -> ModuleType:
    """The module of group ``name``.

    Raises
    ------
    UnknownGroup
        ``name`` is not a group; the message lists the groups.
    """
    if name not in NAMES:
        raise UnknownGroup(f"unknown group {name!r}: choose from {', '.join(NAMES)}")
    return importlib.import_module(f"bench.groups.{name}")


def summary(module: ModuleType) -> str:
    """The first paragraph of a group's docstring, on one line."""
    return " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())


def with_overrides(params: object, pairs: list[str]) -> object:
    """``params`` with ``KEY=VALUE`` overrides, each value parsed as its field's type.

    Raises
    ------
    ValueError
        An unknown key, or a value its field's type cannot take; the message names the fields.
    """
    hints = typing.get_type_hints(type(params))
    changes = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            names = ", ".join(f.name for f in dataclasses.fields(params))
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {names}")
        kind = hints[key]
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--set {key}: {text!r} is not true or false")
            changes[key] = text.lower() in ("true", "1", "yes")
        else:
            try:
                changes[key] = kind(text)
            except ValueError as e:
                raise ValueError(f"--set {key}: {text!r} is not a {kind.__name__}") from e
    return dataclasses.replace(params, **changes)
