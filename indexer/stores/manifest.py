"""The index manifest: what an index was built with, and the check that a query or resumed build matches.

A manifest is a plain JSON dict::

    {"format": 1, "model": {"name", "revision", "fingerprint", "family"}, "pooling": "mean",
     "preprocess": {...PreprocessConfig.to_dict()...}, "dim": 768, "created": ISO time,
     "versions": {"torch": ..., "transformers": ..., "faiss": ..., "mae_microscopy": ...},
     "normalize": {"kind": "none"} or {"kind", "eps", "fit_on", "n_fit", "sha256"}}

``normalize`` is checked by :func:`indexer.ingest.plan.settle_normalize` and the fitted arrays by
:mod:`indexer.vectors.transform_file` (missing = ``none``, for indexes built before it).

The count is not stored here; stores report it live. A stored manifest also carries ``"checksum":
"sha256:..."`` over the rest of its content (:func:`seal_manifest`), so a manifest edited by hand
after the build (another pooling or preprocessing would silently change what queries mean) is refused
when it is read (:func:`check_manifest`). Manifests written before the checksum existed have none and
are accepted as they are; one that should have one (it has an ``index_uid``, or its folder's state
file names one: both came later) and lacks it was edited, and is refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from indexer.core.errors import IndexDamagedError, IndexMismatchError, ModelLoadError
from indexer.core.safe_files import NotARegularFile, read_bounded_text

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
        "index_uid": uuid.uuid4().hex,  # one per index; the folder and its Redis index share it
    }


def record_model_paths(model: dict[str, Any], index_dir: Path | None) -> dict[str, Any]:
    """Return the manifest's model record with paths that resolve from anywhere.

    For a local model folder: ``path`` (absolute) and ``path_from_index`` (relative to the index
    folder, so an index moved or copied together with its model still finds it). A hub id gets neither.
    """
    out = dict(model)
    local = Path(str(model.get("name", "")))
    if local.is_dir():
        out["path"] = str(local.resolve())
        if index_dir is not None:
            out["path_from_index"] = os.path.relpath(local.resolve(), Path(index_dir).resolve())
    return out


def resolve_model_name(manifest: dict[str, Any], index_dir: Path | None) -> str:
    """Where to load an index's model from: the first of (index folder + ``path_from_index``, ``path``,
    ``name``) that is a folder; a hub id as recorded.

    Raises
    ------
    ModelLoadError
        When the index was built from a local folder that none of the recorded paths reaches.
    """
    model = manifest.get("model", {})
    name = str(model.get("name"))
    tried = []
    if index_dir is not None and model.get("path_from_index"):
        tried.append(Path(index_dir) / model["path_from_index"])
    if model.get("path"):
        tried.append(Path(model["path"]))
    tried.append(Path(name))
    for candidate in tried:
        if candidate.is_dir():
            return str(candidate)
    if model.get("path") or name.startswith((".", "/", "~")) or name.count("/") > 1:
        places = ", ".join(dict.fromkeys(str(t) for t in tried))
        raise ModelLoadError(
            f"the index was built with the model folder {name!r}, which is not at {places} (moved?). "
            "Give its new place with --model PATH (the weights are checked against the index's fingerprint)."
        )
    return name


def read_folder_manifest(index_dir: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of an index folder (checked by :func:`check_manifest`), or ``None`` when
    there is none (a new folder).

    Raises
    ------
    IndexDamagedError
        Not valid JSON, not an object, a key missing, or changed since the build.
    """
    path = Path(index_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(read_bounded_text(path))
    except NotARegularFile:
        raise
    except ValueError as e:
        raise IndexDamagedError(
            f"manifest {path} is not valid JSON ({e}): it was damaged or edited since the build; restore it, "
            "or rebuild the index into a new folder"
        ) from e
    return check_manifest(data, str(path), sealed=_state_names_a_uid(Path(index_dir)))


def _state_names_a_uid(index_dir: Path) -> bool:
    """Whether the folder's state file records an index uid: written since manifests are sealed, so its
    manifest had a checksum (and an ``index_uid``) whatever an edit left of them."""
    try:
        state = json.loads(read_bounded_text(index_dir / "index.state.json"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and bool(state.get("index_uid"))


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
        problems += _diff_values(key, stored.get(key), current.get(key))
    return problems


def _diff_values(name: str, stored: Any, current: Any) -> list[str]:
    # Nested dicts (preprocess.intensity.mode) are compared field by field, so a message names the
    # one field that differs instead of printing two dicts.
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _diff_values(f"{name}.{key}", stored.get(key), current.get(key))
        return out
    if stored != current:
        return [f"{name}: index has {stored!r}, this run has {current!r}"]
    return []


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
            + "\nRe-run without --model, --pooling and the preprocessing flags: a build into an existing index "
            "takes them from its manifest. Or build a new index (another --index folder)."
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


def check_manifest(data: Any, where: str, sealed: bool = False) -> dict[str, Any]:
    """Return ``data`` (without its checksum) when it is a sound manifest; otherwise say what is wrong.

    Parameters
    ----------
    data
        The parsed JSON.
    where
        The file or Redis key, for the message.
    sealed
        The manifest must carry a checksum (its folder's state file names an index uid: written since).
        One with an ``index_uid`` must too: the uid came after the checksum, so only an edit removes it.

    Raises
    ------
    IndexDamagedError
        Not a JSON object, a required key missing, a checksum that does not match the content (the
        manifest was changed since the build), or no checksum where the manifest's age says it had one.
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
    if stored is None and (sealed or "index_uid" in data):
        raise IndexDamagedError(
            f"manifest {where} has no checksum, though every manifest written since checksums were added "
            f"has one: it was edited (deleting the checksum does not make an edit valid); {fix}"
        )
    if stored is not None and stored != manifest_checksum(data):
        raise IndexDamagedError(
            f"manifest {where} was changed since the build (its checksum does not match its content), so "
            f"queries would no longer embed images as the index did; {fix}"
        )
    # Callers see what was written; writing it again seals it again.
    return {k: v for k, v in data.items() if k != CHECKSUM_KEY}
