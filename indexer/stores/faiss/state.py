"""The FAISS folder's own bookkeeping: ``index.state.json``, the damage it reveals, and housekeeping.

``index.state.json`` records every shard's size, rows and SHA-256 (format 2 on), and which shards
``index.faiss`` covers, of which kind, with its ``faiss`` section and its re-rank file (format 3). It
is what lets an open check the folder cheaply (a missing, truncated or overwritten shard), and
``check(full=True)`` compare every shard's checksum. Formats 1 and 2 are still read: format 1 listed
names only, and before format 3 the snapshot covered every listed shard.

The document is built and parsed by pure functions (:func:`state_document`, :func:`parse_state`); the
few functions that touch the folder say so.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.core.atomic import atomic_write_json, file_sha256, temp_file_pid
from indexer.core.errors import StoreUnavailableError
from indexer.core.safe_files import read_bounded_text
from indexer.stores.faiss.kinds import DEFAULT_KIND
from indexer.stores.faiss.shards import FOREIGN, SHARDS, ShardInfo
from indexer.stores.lock import pid_alive

MANIFEST = "manifest.json"
TRANSFORM = "normalize.npz"
INDEX = "index.faiss"
INDEX_STATE = "index.state.json"
STATE_FORMAT = 3


@dataclass(frozen=True)
class FolderState:
    """What ``index.state.json`` says, whatever its format (an absent file says nothing).

    Attributes
    ----------
    shards
        Each recorded shard by name (empty for format 1, which kept no sizes).
    snapshot_shards
        The shards ``index.faiss`` covers, in order (before format 3: every listed shard).
    snapshot_kind
        The kind of index ``index.faiss`` holds (before format 3: Flat).
    faiss
        The copy of the manifest's ``faiss`` section (for folders without a manifest).
    rerank
        What the state file records of ``index.rerank`` (PQ kinds), or empty.
    found
        Whether there was a state document at all.
    """

    shards: dict[str, ShardInfo] = field(default_factory=dict)
    snapshot_shards: list[str] = field(default_factory=list)
    snapshot_kind: str = DEFAULT_KIND
    faiss: dict[str, Any] = field(default_factory=dict)
    rerank: dict[str, Any] = field(default_factory=dict)
    found: bool = False


def parse_state(state: dict[str, Any] | None) -> FolderState:
    """Read a state document (as :func:`read_state` returns it; ``None`` for none) into a
    :class:`FolderState`."""
    found = state is not None
    state = state or {}
    recorded: dict[str, ShardInfo] = {}
    for entry in state.get("shards", []):
        if isinstance(entry, dict):  # format 2; format 1 listed names only
            recorded[entry["name"]] = ShardInfo(
                entry["name"], int(entry["bytes"]), int(entry["rows"]), entry.get("sha256")
            )
    # Which shards index.faiss covers, and of which kind: format 3 says so; before, it covered all.
    snap = state.get("snapshot") or {}
    snap_names = list(
        snap.get("shards", [e["name"] if isinstance(e, dict) else e for e in state.get("shards", [])])
    )
    return FolderState(
        shards=recorded,
        snapshot_shards=snap_names,
        snapshot_kind=snap.get("index", DEFAULT_KIND),
        faiss=dict(snap.get("faiss") or {}),
        rerank=dict(snap.get("rerank") or {}),
        found=found,
    )


def state_document(
    shards: list[ShardInfo],
    snapshot_shards: list[str],
    snapshot_kind: str | None,
    faiss: dict[str, Any],
    rerank: dict[str, Any],
    ntotal: int,
) -> dict[str, Any]:
    """The ``index.state.json`` document (format :data:`STATE_FORMAT`) for these shards and snapshot."""
    return {
        "format": STATE_FORMAT,
        "shards": [s.to_dict() for s in shards],
        "snapshot": {
            "shards": list(snapshot_shards),
            "index": snapshot_kind,
            "faiss": faiss,
            **({"rerank": rerank} if rerank else {}),
        },
        "ntotal": ntotal,
    }


def snapshot_covers(shards: list[str], snapshot_shards: list[str]) -> bool:
    """Whether a snapshot of ``snapshot_shards`` covers the first of the folder's ``shards`` (so the
    later ones can be caught up instead of rebuilding the index)."""
    return bool(snapshot_shards) and shards[: len(snapshot_shards)] == snapshot_shards


def open_problems(
    state_found: bool, recorded: dict[str, ShardInfo], on_disk: set[str], index_exists: bool
) -> list[str]:
    """The damage an open sees before reading a shard: recorded shards that are missing, and an
    ``index.faiss`` left without any shard or state file."""
    problems = [
        f"shard {SHARDS}/{name} is missing (it held {info.rows} rows)"
        for name, info in recorded.items()
        if name not in on_disk
    ]
    if not state_found and not on_disk and index_exists:
        problems.append(f"{INDEX} exists but every shard and {INDEX_STATE} are missing")
    return problems


def read_state(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Read ``index.state.json`` of the folder: ``(document, None)``, ``(None, None)`` when there is
    none, or ``(None, problem)`` when it cannot be read."""
    path = Path(directory) / INDEX_STATE
    if not path.exists():
        return None, None
    try:
        state = json.loads(read_bounded_text(path))  # a regular file of bounded size: never /dev/zero
        if not isinstance(state, dict) or not isinstance(state.get("shards"), list):
            raise ValueError("not an object with a shard list")
        return state, foreign_state_problem(state, stored_index_uid(directory))
    except (OSError, ValueError) as e:
        return None, f"{INDEX_STATE} is unreadable ({e})"


def write_state(directory: Path, document: dict[str, Any]) -> None:
    """Write ``index.state.json`` atomically, with the folder's index uid (from its manifest)."""
    uid = stored_index_uid(directory)
    atomic_write_json(Path(directory) / INDEX_STATE, {**document, **({"index_uid": uid} if uid else {})})


def foreign_state_problem(state: dict[str, Any], uid: str | None) -> str | None:
    """The problem of a state file written for another index than the folder's manifest names, else None.

    The state file records each shard's SHA-256 and the snapshot it describes, so a state file that is
    this folder's vouches for its shards and ``index.faiss``; one copied in with another index's files
    vouches for those instead.
    """
    theirs = state.get("index_uid")
    if theirs and uid and theirs != uid:
        return (
            f"{INDEX_STATE} {FOREIGN} (index uid {theirs}; this folder's manifest says {uid}): its shards and "
            f"{INDEX} were copied from another index folder; copy that whole folder instead, or rebuild"
        )
    return None


def stored_index_uid(directory: Path) -> str | None:
    """The ``index_uid`` of the manifest on disk, or None (no manifest, or one without a uid)."""
    try:
        data = json.loads(read_bounded_text(Path(directory) / MANIFEST))
    except (OSError, ValueError):
        return None
    uid = data.get("index_uid") if isinstance(data, dict) else None
    return uid if isinstance(uid, str) else None


def checksum_problems(directory: Path, shards: dict[str, ShardInfo]) -> list[str]:
    """Shards whose SHA-256 differs from the one recorded when they were written (reads every shard)."""
    problems = []
    for name, info in sorted(shards.items()):
        p = Path(directory) / SHARDS / name
        if info.sha256 is not None and p.exists() and file_sha256(p) != info.sha256:
            problems.append(
                f"shard {SHARDS}/{name} does not match its recorded SHA-256 (changed since written)"
            )
    return problems


def stored_faiss_section(directory: Path) -> dict[str, Any]:
    """The ``faiss`` section of the manifest on disk, or empty (a damaged manifest is reported by
    :meth:`FaissStore.read_manifest`, not here)."""
    try:
        data = json.loads(read_bounded_text(Path(directory) / MANIFEST))
    except (OSError, ValueError):
        return {}
    section = data.get("faiss") if isinstance(data, dict) else None
    return dict(section) if isinstance(section, dict) else {}


def remove_stale_temp_files(directory: Path) -> None:
    """Remove the temp files that dead writers left in the folder and its shards folder."""
    # A process killed inside atomic_write leaves its temp file behind; it is never part of the index.
    # Only a dead writer's: the lock keeps other writers out, but this process may have a write in
    # flight on another thread, and a writer that ignores the lock must not lose its work either.
    for folder in (Path(directory), Path(directory) / SHARDS):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                pid = temp_file_pid(p.name)
                if pid is None or not pid_alive(pid):
                    p.unlink(missing_ok=True)


def probe_writable(directory: Path) -> None:
    """Check that the folder (and its shards folder) takes new files.

    Raises
    ------
    StoreUnavailableError
        A folder refuses a new file (permissions, a read-only mount).
    """
    # Before anything is embedded: a folder that takes the lock may still refuse new files. The
    # probe's name is a temp file's, so a sweep removes it.
    for folder in (Path(directory), Path(directory) / SHARDS):
        if not folder.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=f".probe.{os.getpid()}-", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise StoreUnavailableError(
                f"index folder {folder} is not writable ({e.strerror or e}): choose another --index "
                "folder, or fix its permissions"
            ) from e
