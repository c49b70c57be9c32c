"""The index manifest: what an index was built with, and the check that a query or resumed build matches.

A manifest is a plain JSON dict::

    {"format": 1, "model": {"name", "revision", "fingerprint", "family"}, "pooling": "mean",
     "preprocess": {...PreprocessConfig.to_dict()...}, "dim": 768, "created": ISO time,
     "versions": {"torch": ..., "transformers": ..., "faiss": ..., "mae_microscopy": ...}}

The count is not stored here; stores report it live.
"""

from __future__ import annotations

import datetime as _dt
from importlib import metadata
from typing import Any

from indexer.errors import IndexMismatchError

MANIFEST_FORMAT = 1

#: Keys whose values must be equal for two embedding runs to produce comparable vectors.
_EMBEDDING_KEYS = ("pooling", "preprocess", "dim")


def library_versions() -> dict[str, str]:
    """Return the installed versions of the libraries that shape an embedding or an index."""
    out = {}
    for dist in ("mae-microscopy", "torch", "transformers", "faiss-cpu", "numpy", "tifffile", "redis"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_manifest(
    model: dict[str, Any], pooling: str, preprocess: dict[str, Any], dim: int
) -> dict[str, Any]:
    """Return a new manifest dict for an index built with these settings."""
    return {
        "format": MANIFEST_FORMAT,
        "model": dict(model),
        "pooling": pooling,
        "preprocess": preprocess,
        "dim": int(dim),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def _model_identity(model: dict[str, Any]) -> tuple[str, str | None]:
    # Weights are identified by their content fingerprint when known, so the same local folder
    # reached through another path still matches; otherwise by name and revision.
    if model.get("fingerprint"):
        return ("fingerprint", model["fingerprint"])
    return ("name", f"{model.get('name')}@{model.get('revision') or 'main'}")


def diff_manifests(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return human-readable differences that make two manifests' vectors incomparable (empty = compatible)."""
    problems = []
    if _model_identity(stored.get("model", {})) != _model_identity(current.get("model", {})):
        problems.append(
            f"model: index has {stored.get('model', {}).get('name')!r} "
            f"(fingerprint {str(stored.get('model', {}).get('fingerprint'))[:12]}), "
            f"this run has {current.get('model', {}).get('name')!r} "
            f"(fingerprint {str(current.get('model', {}).get('fingerprint'))[:12]})"
        )
    for key in _EMBEDDING_KEYS:
        if stored.get(key) != current.get(key):
            problems.append(f"{key}: index has {stored.get(key)!r}, this run has {current.get(key)!r}")
    return problems


def same_embedding(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when two manifests give comparable vectors (same model, pooling, preprocessing, dimension).

    Two missing manifests (two empty stores) are the same; one missing one is not.
    """
    if a is None or b is None:
        return a is None and b is None
    return not diff_manifests(a, b)


def check_compatible(stored: dict[str, Any] | None, current: dict[str, Any], where: str) -> None:
    """Raise :class:`IndexMismatchError` when ``current`` settings differ from the ``stored`` manifest.

    ``where`` names the index (a folder or a Redis index) for the message. ``stored=None`` (a new
    index) is always compatible.
    """
    if stored is None:
        return
    problems = diff_manifests(stored, current)
    if problems:
        raise IndexMismatchError(
            f"the index at {where} was built with other settings, so its vectors are not comparable:\n  - "
            + "\n  - ".join(problems)
            + "\nUse the index's own model and preprocessing (omit --model and preprocessing flags to take "
            "them from the manifest), or build a new index (another --index folder / Redis index name)."
        )
