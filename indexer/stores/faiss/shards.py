"""The FAISS folder's parquet shards: their format, and reading and writing one shard.

A shard is ``shards/part-NNNNNN.parquet``: one row per id with its float32 vector, a ``deleted`` flag
(a tombstone hides every earlier row of its id) and the record's metadata columns. Shards are written
once, atomically, and never changed; a later shard overrides an earlier one per id. Each new shard
carries its folder's index uid (the manifest's ``index_uid``) in its parquet schema metadata
(:data:`UID_KEY`), read with the footer, so that another index's shard copied into a folder is told
apart without reading its rows. Nothing here knows about the search index, the manifest or the state
file: this is the I/O of one shard, and the pure bookkeeping of which row holds an id's current vector.
"""

from __future__ import annotations

import errno
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.atomic import atomic_write, file_sha256
from indexer.core.records import RECORD_FIELDS, ImageRecord

#: The shards' sub-folder of an index folder.
SHARDS = "shards"
SHARD_RE = re.compile(r"^part-(\d{6})\.parquet$")
STR_FIELDS = ("path", "plate", "well", "row", "channel", "source")
INT_FIELDS = ("column", "site", "z")
# Two stores of one folder in one process: the folder lock does not tell them apart, this does.
_SHARD_NAMES = threading.Lock()
#: The parquet schema metadata key of a shard's index uid (shards written before it have none).
UID_KEY = b"mae.index_uid"
#: What a shard or state file of another index does; ``repair`` refuses a folder where it is found.
FOREIGN = "belongs to another index"
#: What a shard without a uid does among shards that carry the folder's; ``repair`` refuses it too.
UNMARKED = "carries no index uid"


@dataclass(frozen=True)
class ShardInfo:
    """What the state file records about one shard: enough to notice a missing, truncated or changed one."""

    name: str
    bytes: int
    rows: int
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "bytes": self.bytes, "rows": self.rows, "sha256": self.sha256}


@dataclass(frozen=True)
class ShardContents:
    """One shard as :func:`read_shard` reads it: everything but its vectors."""

    info: ShardInfo
    ids: np.ndarray
    dim: int
    #: Each metadata field's column (:data:`~indexer.core.records.RECORD_FIELDS`), and the tags column
    #: (JSON ``{key: value}`` or None): columns, not records, so that a 10 M-row folder opens without
    #: making 10 M objects (:meth:`~indexer.stores.record_table.RecordTable.load_shard` takes them).
    meta: dict[str, list]
    tags: list[str | None]
    deleted: np.ndarray
    #: The index uid the shard carries (``None``: written before shards carried one).
    index_uid: str | None = None

    @property
    def records(self) -> list[ImageRecord]:
        """The shard's rows as records."""
        return _records(self.ids, self.meta, self.tags)


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the user's quota) is full."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    # faiss reports a failed write as a RuntimeError carrying the C library's message.
    return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


def _arrow_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim)), ("deleted", pa.bool_())]
        + [(f, pa.string()) for f in STR_FIELDS]
        + [(f, pa.int32()) for f in INT_FIELDS]
        + [("tags", pa.string())]  # JSON {key: value}; null without tags (older shards lack the column)
    )


def records_to_table(vectors: np.ndarray, records: Sequence[ImageRecord], deleted: bool = False):
    """Return a pyarrow Table of one shard (id, vector, deleted flag, metadata columns)."""
    import pyarrow as pa

    dim = vectors.shape[1]
    n = len(records)
    cols: dict[str, Any] = {
        "id": pa.array([r.id for r in records], pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
        "deleted": pa.array([deleted] * n, pa.bool_()),
    }
    for f in STR_FIELDS:
        cols[f] = pa.array([getattr(r, f) for r in records], pa.string())
    for f in INT_FIELDS:
        cols[f] = pa.array([getattr(r, f) for r in records], pa.int32())
    cols["tags"] = pa.array([json.dumps(dict(r.tags)) if r.tags else None for r in records], pa.string())
    return pa.table(cols, schema=_arrow_schema(dim))


def _tags_column(table, n: int) -> list:
    # Shards written before tags existed lack the column.
    return table.column("tags").to_pylist() if "tags" in table.column_names else [None] * n


def _records(ids: np.ndarray, meta: dict[str, list], tags: list) -> list[ImageRecord]:
    return [
        ImageRecord(
            id=int(ids[i]), **{f: meta[f][i] for f in RECORD_FIELDS}, tags=json.loads(tags[i] or "{}")
        )
        for i in range(len(ids))
    ]


def table_to_records(table) -> tuple[np.ndarray, np.ndarray, list[ImageRecord], np.ndarray]:
    """Inverse of :func:`records_to_table`: ``(ids, vectors, records, deleted)``."""
    ids = table.column("id").to_numpy()
    vec_col = table.column("vector").combine_chunks()
    dim = vec_col.type.list_size
    vectors = vec_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    deleted = table.column("deleted").to_numpy(zero_copy_only=False).astype(bool)
    # Shards written before a field existed (``source``) lack its column: the value is unknown.
    meta = {
        f: table.column(f).to_pylist() if f in table.column_names else [None] * len(ids)
        for f in RECORD_FIELDS
    }
    records = _records(ids, meta, _tags_column(table, len(ids)))
    return ids.astype(np.int64), vectors, records, deleted


def shard_paths(directory: Path) -> list[Path]:
    """The shard files of the index folder ``directory``, in shard order (empty without a shards folder)."""
    d = Path(directory) / SHARDS
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if SHARD_RE.match(p.name))


def read_shard(
    path: Path, expected: ShardInfo | None, dim: int | None, index_uid: str | None = None
) -> ShardContents | str:
    """Read one shard's ids, deleted flags and metadata (not its vectors).

    Parameters
    ----------
    path
        The shard file.
    expected
        What the state file recorded of it (``None``: nothing); its size and row count must match.
    dim
        The folder's vector dimension, when known; the shard's must match.
    index_uid
        The folder's index uid, when known; a shard carrying another is damaged (told from the footer,
        before any row is read). A shard carrying none is accepted here (:func:`unmarked_problem`).

    Returns
    -------
    ShardContents or str
        The shard, or the sentence saying why it is damaged (for :attr:`FaissStore.damage`).
    """
    import pyarrow.parquet as pq

    size = path.stat().st_size
    try:
        schema = pq.read_schema(path)  # the footer only
    except Exception:  # reported below, after the sizes (a truncated shard says so)
        schema = None
    theirs = shard_uid(schema) if schema is not None else None
    if theirs and index_uid and theirs != index_uid:
        return (
            f"shard {SHARDS}/{path.name} {FOREIGN} (index uid {theirs}; this folder's manifest says "
            f"{index_uid}): it was copied from another index folder (or manifest.json was replaced since it was "
            f"written); move it out of {SHARDS}/ and `repair` rebuilds this folder from the rest, or copy that "
            "index's whole folder, manifest included"
        )
    if expected is not None and expected.bytes != size:
        return (
            f"shard {SHARDS}/{path.name} has {size} bytes, the state file says {expected.bytes} "
            f"(truncated or overwritten; it held {expected.rows} rows)"
        )
    try:
        if schema is None:
            schema = pq.read_schema(path)  # raises again: reported as unreadable
        table = pq.read_table(path, columns=[n for n in schema.names if n != "vector"])
        ids = table.column("id").to_numpy().astype(np.int64)
        deleted = table.column("deleted").to_numpy(zero_copy_only=False).astype(bool)
        meta = {f: table.column(f).to_pylist() for f in RECORD_FIELDS}
        tags = _tags_column(table, len(ids))
        shard_dim = schema.field("vector").type.list_size
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and more for a damaged file
        held = f"; it held {expected.rows} rows" if expected is not None else ""
        return f"shard {SHARDS}/{path.name} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}{held})"
    if expected is not None and expected.rows != len(ids):
        return f"shard {SHARDS}/{path.name} has {len(ids)} rows, the state file says {expected.rows}"
    if dim is not None and len(ids) and shard_dim != dim:
        return f"shard {SHARDS}/{path.name} holds {shard_dim}-d vectors, not {dim}-d"
    info = ShardInfo(path.name, size, len(ids), expected.sha256 if expected is not None else None)
    return ShardContents(info, ids, shard_dim, meta, tags, deleted, theirs)


def shard_uid(schema) -> str | None:
    """The index uid a shard's pyarrow ``schema`` carries (:data:`UID_KEY`), or None."""
    raw = (schema.metadata or {}).get(UID_KEY)
    return raw.decode("utf-8", "replace") if raw else None


def unmarked_problem(name: str, marked: str, index_uid: str) -> str:
    """The damage of shard ``name``, which carries no index uid, after shard ``marked`` that carries the
    folder's ``index_uid``.

    Every shard written since shards carry uids carries the folder's, and shards are numbered in the
    order they were written: an old folder's shards come before its new ones, never after. One without
    a uid after one with it was copied in from an older folder (or written by an older
    mae-microscopy), and nothing says whose images it holds.
    """
    return (
        f"shard {SHARDS}/{name} {UNMARKED}, though {SHARDS}/{marked} before it carries this folder's "
        f"({index_uid}): it was copied in from an older index folder; move it out of {SHARDS}/ if it is not "
        "this index's, or rebuild the index"
    )


def describe_shard(path: Path) -> ShardInfo:
    """Size and row count of a shard no state file describes yet (one a crashed writer left)."""
    import pyarrow.parquet as pq

    return ShardInfo(path.name, path.stat().st_size, pq.read_metadata(path).num_rows)


def read_vectors(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """Float32 vectors of one shard (``rows`` of it only, when given), exact as written."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["vector"]).column("vector")
    col = col.combine_chunks()
    if rows is not None:
        col = col.take(rows)
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def read_ids(path: Path) -> np.ndarray:
    """The ids of one shard's rows, for catching a snapshot up."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_numpy()


def write_shard(directory: Path, table, index_uid: str | None = None) -> ShardInfo:
    """Write ``table`` atomically as the next shard of the index folder ``directory``, carrying the
    folder's ``index_uid`` when it has one; return its size, rows and checksum.

    The name is allocated while this process holds the folder's write lock, so two writers never pick
    the same one (the thread lock covers two stores of one folder in one process).

    Raises
    ------
    OSError, RuntimeError
        The write failed (:func:`disk_full` tells a full disk); no shard was added.
    """
    import pyarrow.parquet as pq

    if index_uid:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), UID_KEY: index_uid.encode()})

    def write(p: Path) -> None:
        pq.write_table(table, p)
        info[0] = ShardInfo(shard.name, p.stat().st_size, table.num_rows, file_sha256(p))

    with _SHARD_NAMES:
        existing = shard_paths(directory)
        next_no = int(SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
        shard = Path(directory) / SHARDS / f"part-{next_no:06d}.parquet"
        info: list[ShardInfo | None] = [None]
        atomic_write(shard, write)
    assert info[0] is not None
    return info[0]
