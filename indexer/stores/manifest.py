"""The index manifest: what an index was built with, and the check that a query or resumed build matches.

A manifest is a plain JSON dict::

    {"format": 1, "model": {"name", "revision", "fingerprint", "family"}, "pooling": "mean",
     "preprocess": {...PreprocessConfig.to_dict()...}, "dim": 768, "created": ISO time,
     "versions": {"torch": ..., "transformers": ..., "faiss": ..., "mae_microscopy": ...}}

The count is not stored here; stores report it live. A stored manifest also carries ``"checksum":
"sha256:..."`` over the rest of its content (:func:`seal_manifest`), so a manifest edited by hand
after the build (another pooling or preprocessing would silently change what queries mean) is refused
when it is read (:func:`check_manifest`). Manifests written before the checksum existed have none and
are accepted as they are.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from importlib import metadata
from typing import Any

from indexer.errors import IndexDamagedError, IndexMismatchError

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


#: Keys every manifest has; a missing one means the file was damaged or edited.
REQUIRED_KEYS = ("model", "pooling", "preprocess", "dim")
CHECKSUM_KEY = "checksum"


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """``sha256:`` over the manifest's canonical JSON (sorted keys), the checksum itself left out."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``manifest`` carrying the checksum of its content."""
    return {**manifest, CHECKSUM_KEY: manifest_checksum(manifest)}


def check_manifest(data: Any, where: str) -> dict[str, Any]:
    """Return ``data`` (without its checksum) when it is a sound manifest; otherwise say what is wrong.

    Parameters
    ----------
    data
        The parsed JSON.
    where
        The file or Redis key, for the message.

    Raises
    ------
    IndexDamagedError
        Not a JSON object, a required key missing, or a checksum that does not match the content
        (the manifest was changed since the build).
    """
    fix = "restore it from a backup, or rebuild the index into a new folder / Redis index name"
    if not isinstance(data, dict):
        raise IndexDamagedError(
            f"manifest {where} is a JSON {type(data).__name__}, not an object: it was damaged or edited; {fix}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise IndexDamagedError(
            f"manifest {where} lacks {', '.join(missing)}: it was damaged or edited; {fix}"
        )
    stored = data.get(CHECKSUM_KEY)
    if stored is not None and stored != manifest_checksum(data):
        raise IndexDamagedError(
            f"manifest {where} was changed since the build (its checksum does not match its content), so "
            f"queries would no longer embed images as the index did; {fix}"
        )
    # Callers see what was written; writing it again seals it again.
    return {k: v for k, v in data.items() if k != CHECKSUM_KEY}
