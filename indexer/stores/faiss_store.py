"""The FAISS store: exact inner-product search over L2-normalised vectors, in an index folder.

Folder layout::

    manifest.json          what the index was built with (indexer.stores.manifest)
    normalize.npz          the fitted --normalize transform, when there is one (indexer.normalize)
    shards/part-NNNNNN.parquet
                           the source of truth: append-only shards of (id, vector, deleted, metadata),
                           each written atomically; a later shard overrides an earlier one per id
    index.faiss            a snapshot of the FAISS index (IDMap2 over Flat inner product)
    index.state.json       which shards that snapshot covers

Writes are buffered and become durable at :meth:`FaissStore.flush` as one new shard. A crash can lose
only unflushed rows, never corrupt what was flushed; on open, a stale or missing ``index.faiss`` is
rebuilt from the shards.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexer.atomic import atomic_write, atomic_write_json
from indexer.errors import ConfigError, StoreUnavailableError
from indexer.stores.base import (
    DISTANCE_SLACK,
    RECORD_FIELDS,
    SPARE_CANDIDATES,
    VECTOR_TOLERANCE,
    Hit,
    ImageRecord,
    MetadataFilter,
    check_queries,
    rank_hits,
    tags_match,
)

MANIFEST = "manifest.json"
TRANSFORM = "normalize.npz"
SHARDS = "shards"
INDEX = "index.faiss"
INDEX_STATE = "index.state.json"
_SHARD_RE = re.compile(r"^part-(\d{6})\.parquet$")
_STR_FIELDS = ("path", "plate", "well", "row", "channel", "source")
_TRIM = " \t\n\r\f\v"
_INT_FIELDS = ("column", "site", "z")
_UNTRIED = object()  # no GPU copy made yet (None: tried, CPU only)


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is a core dependency
        raise StoreUnavailableError("FAISS is not installed: pip install faiss-cpu") from e
    return faiss


def _arrow_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim)), ("deleted", pa.bool_())]
        + [(f, pa.string()) for f in _STR_FIELDS]
        + [(f, pa.int32()) for f in _INT_FIELDS]
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
    for f in _STR_FIELDS:
        cols[f] = pa.array([getattr(r, f) for r in records], pa.string())
    for f in _INT_FIELDS:
        cols[f] = pa.array([getattr(r, f) for r in records], pa.int32())
    cols["tags"] = pa.array([json.dumps(dict(r.tags)) if r.tags else None for r in records], pa.string())
    return pa.table(cols, schema=_arrow_schema(dim))


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
    tags = table.column("tags").to_pylist() if "tags" in table.column_names else [None] * len(ids)
    records = [
        ImageRecord(
            id=int(ids[i]), **{f: meta[f][i] for f in RECORD_FIELDS}, tags=json.loads(tags[i] or "{}")
        )
        for i in range(len(ids))
    ]
    return ids.astype(np.int64), vectors, records, deleted


class FaissStore:
    """A :class:`~indexer.stores.base.VectorStore` backed by FAISS (exact inner product) and parquet.

    Parameters
    ----------
    directory
        The index folder; created when missing.
    dim
        Vector dimension. Needed for a new index; checked against an existing one.
    read_only
        Open for queries only (no shard or snapshot is written).
    gpu
        Run unfiltered searches on a GPU copy of the index where faiss has GPU support and the copy
        passes a probe search (:mod:`indexer.stores.faiss_gpu`); otherwise, or when False, on the CPU.
    """

    def __init__(
        self, directory: Path, dim: int | None = None, read_only: bool = False, gpu: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        self.gpu = gpu
        self._gpu_index: Any = _UNTRIED
        if read_only and not (self.directory / SHARDS).is_dir() and not (self.directory / MANIFEST).exists():
            raise StoreUnavailableError(
                f"no index at {self.directory}: build one first with `mae-index build DATA --index {self.directory}`"
            )
        self._records: dict[int, ImageRecord] = {}
        self._pending_vectors: list[np.ndarray] = []
        self._pending_records: list[ImageRecord] = []
        self._pending_deletes: list[ImageRecord] = []
        self._meta_frame: pd.DataFrame | None = None
        self._index = None
        self.dim = dim
        self._load()
        if self.dim is None:
            manifest = self.read_manifest()
            self.dim = manifest["dim"] if manifest else None
        if dim is not None and self.dim is not None and dim != self.dim:
            raise ConfigError(f"index at {self.directory} holds {self.dim}-d vectors, not {dim}-d")

    @property
    def location(self) -> str:
        """The index folder, for messages."""
        return str(self.directory)

    @property
    def identity(self) -> dict[str, str]:
        """Which store and index this is, for outputs: ``{"store": "faiss", "index": folder}``."""
        return {"store": "faiss", "index": str(self.directory)}

    @property
    def vector_tolerance(self) -> float:
        """Vectors are kept as float32."""
        return VECTOR_TOLERANCE["FLOAT32"]

    # ---------------------------------------------------------------- loading
    def _shard_paths(self) -> list[Path]:
        d = self.directory / SHARDS
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if _SHARD_RE.match(p.name))

    def _iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray, list[ImageRecord], np.ndarray]]:
        import pyarrow.parquet as pq

        for p in self._shard_paths():
            yield table_to_records(pq.read_table(p))

    def _new_index(self, dim: int):
        faiss = _faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def _remove_stale_temp_files(self) -> None:
        # A process killed inside atomic_write leaves its temp file behind; it is never part of the index.
        for folder in (self.directory, self.directory / SHARDS):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    p.unlink(missing_ok=True)

    def _load(self) -> None:
        faiss = _faiss()
        if not self.read_only:
            self._remove_stale_temp_files()
        shards = [p.name for p in self._shard_paths()]
        latest: dict[int, tuple[ImageRecord, np.ndarray | None]] = {}
        for ids, vectors, records, deleted in self._iter_shards():
            if self.dim is None and vectors.size:
                self.dim = vectors.shape[1]
            for i, rec in enumerate(records):
                latest[int(ids[i])] = (rec, None if deleted[i] else vectors[i])
        self._records = {i: rec for i, (rec, vec) in latest.items() if vec is not None}
        if self.dim is None:
            return
        state_path = self.directory / INDEX_STATE
        index_path = self.directory / INDEX
        if index_path.exists() and state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                if state.get("shards") == shards:
                    index = faiss.read_index(str(index_path))
                    if index.ntotal == len(self._records) and index.d == self.dim:
                        self._index = index
            except (OSError, ValueError, RuntimeError):
                self._index = None  # a damaged snapshot is rebuilt from the shards below
        if self._index is None:
            self._index = self._new_index(self.dim)
            live = [(i, vec) for i, (rec, vec) in latest.items() if vec is not None]
            if live:
                ids = np.array([i for i, _ in live], dtype=np.int64)
                self._index.add_with_ids(np.stack([v for _, v in live]).astype(np.float32), ids)
            if not self.read_only and shards:
                self._write_snapshot(shards)

    # ---------------------------------------------------------------- writes
    def _ensure_index(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
        if dim != self.dim:
            raise ConfigError(f"vectors are {dim}-d but the index at {self.directory} is {self.dim}-d")
        if self._index is None:
            self._index = self._new_index(self.dim)

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert vectors and their records (durable at the next :meth:`flush`)."""
        self._check_writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(records):
            raise ValueError("vectors must be (n, dim) with one record per row")
        if not len(records):
            return
        self._ensure_index(vectors.shape[1])
        ids = np.array([r.id for r in records], dtype=np.int64)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        present = ids[[int(i) in self._records for i in ids]]
        if len(present):
            self._index.remove_ids(_faiss().IDSelectorBatch(present))
        self._index.add_with_ids(vectors, ids)
        self._gpu_index = _UNTRIED
        for r in records:
            self._records[r.id] = r
        self._pending_vectors.append(vectors)
        self._pending_records.extend(records)
        self._meta_frame = None

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ids; return how many were present (durable at the next :meth:`flush`)."""
        self._check_writable()
        present = sorted({int(i) for i in ids} & self._records.keys())
        if not present:
            return 0
        self._index.remove_ids(_faiss().IDSelectorBatch(np.array(present, dtype=np.int64)))
        self._gpu_index = _UNTRIED
        for i in present:
            self._pending_deletes.append(self._records.pop(i))
        self._meta_frame = None
        return len(present)

    def flush(self) -> None:
        """Write buffered rows as one new shard (atomically), then refresh the FAISS snapshot."""
        if self.read_only or (not self._pending_records and not self._pending_deletes):
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        if self._pending_records:
            tables.append(records_to_table(np.concatenate(self._pending_vectors), self._pending_records))
        if self._pending_deletes:
            zeros = np.zeros((len(self._pending_deletes), self.dim), dtype=np.float32)
            tables.append(records_to_table(zeros, self._pending_deletes, deleted=True))
        table = pa.concat_tables(tables)
        existing = self._shard_paths()
        next_no = int(_SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
        shard = self.directory / SHARDS / f"part-{next_no:06d}.parquet"
        atomic_write(shard, lambda p: pq.write_table(table, p))
        self._pending_vectors, self._pending_records, self._pending_deletes = [], [], []
        self._write_snapshot([p.name for p in self._shard_paths()])

    def _write_snapshot(self, shards: list[str]) -> None:
        faiss = _faiss()
        atomic_write(self.directory / INDEX, lambda p: faiss.write_index(self._index, str(p)))
        atomic_write_json(self.directory / INDEX_STATE, {"shards": shards, "ntotal": int(self._index.ntotal)})

    def compact(self) -> None:
        """Rewrite all shards as one (drops overridden and deleted rows)."""
        self._check_writable()
        self.flush()
        old = self._shard_paths()
        if len(old) <= 1 or not self._records:
            return
        ids = self.ids()
        vectors = self.get_vectors(ids)
        import pyarrow.parquet as pq

        table = records_to_table(vectors, [self._records[int(i)] for i in ids])
        next_no = int(_SHARD_RE.match(old[-1].name).group(1)) + 1
        atomic_write(
            self.directory / SHARDS / f"part-{next_no:06d}.parquet", lambda p: pq.write_table(table, p)
        )
        # Oldest first, so a tombstone is never removed before the older row it hides.
        for p in old:
            os.unlink(p)
        self._write_snapshot([p.name for p in self._shard_paths()])

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreUnavailableError(f"index at {self.directory} was opened read-only")

    # ---------------------------------------------------------------- reads
    def count(self) -> int:
        """Number of vectors stored (flushed or not)."""
        return len(self._records)

    def ids(self) -> np.ndarray:
        """All ids, sorted int64."""
        return np.array(sorted(self._records), dtype=np.int64)

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Records of ``ids`` (``None`` where absent)."""
        return [self._records.get(int(i)) for i in ids]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids`` as (n, dim) float32; KeyError for a missing id."""
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        for row, i in enumerate(ids):
            if int(i) not in self._records:
                raise KeyError(f"id {i} is not in the index")
            out[row] = self._index.reconstruct(int(i))
        return out

    def field_values(self, name: str) -> list:
        """Distinct values of metadata field ``name``, sorted (None left out)."""
        if name == "tags":
            return sorted({t for r in self._records.values() for t in r.tag_strings})
        if name not in RECORD_FIELDS:
            raise ConfigError(f"no metadata field {name!r}")
        return sorted({v for r in self._records.values() if (v := getattr(r, name)) is not None})

    def _frame(self) -> pd.DataFrame:
        if self._meta_frame is None:
            rows = [{**r.to_dict(), "tags": r.tag_strings} for r in self._records.values()]
            self._meta_frame = pd.DataFrame(rows, columns=["id", *RECORD_FIELDS, "tags"])
        return self._meta_frame

    def matching_ids(self, where: MetadataFilter) -> np.ndarray:
        """Ids of records matching ``where`` (vectorised version of :meth:`MetadataFilter.matches`)."""
        df = self._frame()
        mask = np.ones(len(df), dtype=bool)
        for name in ("plate", "well", "row", "column", "site", "channel", "z", "path", "source"):
            allowed = getattr(where, name)
            if allowed:
                # Surrounding ASCII whitespace is not significant, as in Redis tags.
                col = df[name].str.strip(_TRIM) if name in _STR_FIELDS else df[name]
                mask &= col.isin(list(allowed)).to_numpy()
        if where.z_min is not None:
            mask &= (df["z"].astype("float") >= where.z_min).to_numpy()
        if where.z_max is not None:
            mask &= (df["z"].astype("float") <= where.z_max).to_numpy()
        if where.tags:
            groups = where.tag_groups()
            mask &= np.fromiter((tags_match(groups, t) for t in df["tags"]), dtype=bool, count=len(df))
        return df["id"].to_numpy(dtype=np.int64)[mask]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """Exact top-``k`` by cosine similarity per query, with optional filter and distance bound."""
        empty = self._index is None or not self._records
        queries = check_queries(queries, k, None if empty else self.dim)
        if empty:
            return [[] for _ in queries]
        faiss = _faiss()
        # Scores are cosine similarity whatever the caller passes (stored vectors are unit already).
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        params = None
        n_allowed = len(self._records)
        if where is not None and not where.is_empty:
            allowed = self.matching_ids(where)
            n_allowed = len(allowed)
            if not n_allowed:
                return [[] for _ in queries]
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        kk = min(n_allowed, k + SPARE_CANDIDATES)
        index = self._index if params is not None else self._unfiltered_search_index()
        scores, ids = index.search(queries, kk, params=params)
        out = []
        for row_scores, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            if max_distance is not None:
                keep &= (1.0 - row_scores) <= max_distance + DISTANCE_SLACK
            out.append(rank_hits(row_ids[keep], row_scores[keep], self._records, k))
        return out

    def _unfiltered_search_index(self, clone=None) -> Any:
        # GPU indexes take no IDSelector, so filtered searches always stay on the CPU index.
        # ``clone`` replaces the copy to the GPUs (tests have no GPU).
        if not self.gpu:
            return self._index
        if self._gpu_index is _UNTRIED:
            from indexer.stores.faiss_gpu import clone_to_gpus, faiss_gpu_count, gpu_search_index

            self._gpu_index = None
            if clone is not None or faiss_gpu_count(_faiss()) > 0:
                probe = np.stack([self._index.reconstruct(i) for i in list(self._records)[:4]])
                self._gpu_index = gpu_search_index(_faiss(), self._index, probe, clone or clone_to_gpus)
        return self._gpu_index if self._gpu_index is not None else self._index

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The index manifest, or ``None`` for a new folder."""
        p = self.directory / MANIFEST
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise StoreUnavailableError(f"manifest {p} is not valid JSON: {e}") from e

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically."""
        self._check_writable()
        atomic_write_json(self.directory / MANIFEST, manifest)

    def read_transform(self) -> bytes | None:
        """The fitted normalisation (``normalize.npz`` beside the manifest), or ``None``."""
        p = self.directory / TRANSFORM
        return p.read_bytes() if p.is_file() else None

    def write_transform(self, data: bytes) -> None:
        """Write the fitted normalisation atomically as ``normalize.npz``."""
        self._check_writable()
        atomic_write(self.directory / TRANSFORM, lambda p: p.write_bytes(data))

    def close(self) -> None:
        """Flush pending writes."""
        self.flush()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
