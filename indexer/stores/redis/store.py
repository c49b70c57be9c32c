"""The Redis store: vector search with the Redis Query Engine (Redis Stack 7.2+ or Redis 8) over HASH keys.

Schema of index ``<name>`` (keys ``<name>:img:<id>``, the manifest as JSON at ``<name>:manifest``)::

    plate, well, row, channel, path   TAG, CASESENSITIVE, SEPARATOR "\\x1f"
    column, site, z                   NUMERIC
    vector                            VECTOR FLAT | HNSW (M, EF_CONSTRUCTION, EF_RUNTIME),
                                      TYPE FLOAT32 | FLOAT16, DIM from the model, DISTANCE_METRIC COSINE

Choices, and why:

* ``path`` is a TAG, not TEXT, so a path filter is an exact match (TEXT would tokenise and stem it).
* Tags are case-sensitive (wells are stored normalised, ``A01``; plate names keep their case, as in
  FAISS) and split on the ASCII unit separator, which no name contains, so a value with commas or
  spaces stays one tag. Redis trims the spaces around a tag; :class:`MetadataFilter` trims its values too.
* The id lives in the key only. Ids are 63-bit content hashes and a NUMERIC field is a double (53 bits),
  so an indexed id would be wrong for most images.
* A field that is ``None`` is not written, so it matches no filter (as in FAISS).
* Every command goes out as a raw command over RESP2, parsed here: the same replies whatever the
  redis-py version (its search helpers and reply shapes changed across 5.x to 8.x).

Queries are ``KNN`` with ``DIALECT 2``; the query vector, ``K``, ``EF_RUNTIME`` and every number of a
filter are query ``PARAMS``, and every tag value is escaped (:mod:`indexer.stores.redis.query`), so no user text can
change a query's meaning. Redis returns a cosine *distance* in [0, 2]; this store reports
``score = 1 - distance``, cosine similarity, like the FAISS store, and breaks ties by id the same way
(:func:`indexer.stores.base.rank_hits`).

The store holds its parts, imported one way: the connection (:mod:`indexer.stores.redis.connection`:
client, credential and engine checks, error translation), the schema and hash layout
(:mod:`indexer.stores.redis.schema`, pure), query rendering (:mod:`indexer.stores.redis.query`, pure)
and error messages (:mod:`indexer.stores.redis.errors`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.core.config import RedisConfig
from indexer.core.errors import ConfigError, IndexDamagedError
from indexer.core.records import RECORD_FIELDS, Hit, ImageRecord, MetadataFilter
from indexer.stores.base import SPARE_CANDIDATES, VECTOR_TOLERANCE, check_batch, check_queries, check_storable
from indexer.stores.manifest import check_manifest, seal_manifest
from indexer.stores.redis.connection import RedisConnection
from indexer.stores.redis.errors import redact_url
from indexer.stores.redis.query import (
    NUMERIC_FIELDS,
    TAG_SEPARATOR,
    TAGS_FIELD,
    VECTOR_FIELD,
    pairs,
    text,
)
from indexer.stores.redis.schema import (
    check_index,
    create_command,
    hash_mapping,
    hash_record,
    knn_commands,
    reply_hits,
)

__all__ = ["BULK_BATCH", "QUERY_BATCH", "READ_CHUNK", "WRITE_CHUNK", "RedisStore", "redact_url"]

#: Hashes per MULTI/EXEC in :meth:`RedisStore.add` (about 1.5 MB of 768-d float32 vectors).
WRITE_CHUNK = 500
#: Hashes per pipeline round trip in :meth:`RedisStore.bulk_load`, and the most it holds back between
#: round trips (`python -m bench run redis_scale`, 10,000 x 768 into FLAT on a loaded 2-core box: 6,699 / 7,232
#: / 11,558 / 14,392 vectors/s at 100 / 500 / 1,000 / 5,000; 1,000 keeps a round trip near 3 MB, and a
#: build's checkpoint, every ``--flush-every`` 512 images, sends what is held before that anyway).
BULK_BATCH = 1000
#: Keys per pipeline round trip when reading, and queries per pipeline round trip when searching.
READ_CHUNK = 1000
QUERY_BATCH = 32

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisStore:
    """A :class:`~indexer.stores.base.VectorStore` on Redis vector search (see the module docstring).

    Parameters
    ----------
    config
        Connection and index settings.
    dim
        Vector dimension. A writer passes it: the index is created when missing, and an existing
        index with another DIM, algorithm or vector type is refused. A reader leaves it ``None``: an
        existing index is opened with its own settings (algorithm, type, DIM).

    Raises
    ------
    StoreUnavailableError
        The server cannot be reached, refuses the credentials, or has no query engine.
    IndexMismatchError
        The index exists with other settings than ``config`` and ``dim``.
    ConfigError
        The URL is invalid.
    """

    def __init__(self, config: RedisConfig, dim: int | None = None) -> None:
        self.config = config
        self.dim: int | None = None
        self._failures_at_open = 0
        # bulk_load's hashes not sent yet, (key, mapping); sent before any other call reaches the server,
        # so the server sees every command in the order it was made.
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._conn = RedisConnection(config)
        info = self._index_info()
        if info is None:
            if dim is None:
                manifest = self.read_manifest()
                dim = manifest["dim"] if manifest else None
            if dim is not None:
                self._create_index(int(dim))
        else:
            self.config, self.dim, self._failures_at_open = check_index(info, self.config, dim, self.location)

    # ---------------------------------------------------------------- plumbing
    @property
    def location(self) -> str:
        """The index and server, for messages (never the password)."""
        return f"Redis index {self.config.index_name!r} at {redact_url(self.config.url)}"

    @property
    def identity(self) -> dict[str, str]:
        """Which store and index this is, for outputs (the server without secrets)."""
        return {"store": "redis", "index": self.config.index_name, "server": redact_url(self.config.url)}

    @property
    def vector_tolerance(self) -> float:
        """FLOAT16 vectors come back rounded to about 1e-3; FLOAT32 ones exactly."""
        return VECTOR_TOLERANCE[self.config.dtype]

    @property
    def _dtype(self) -> np.dtype:
        # Little-endian whatever the machine: the byte layout Redis expects for vector blobs.
        return np.dtype("<f2") if self.config.dtype == "FLOAT16" else np.dtype("<f4")

    @property
    def client(self):
        """The redis-py client (RESP2), for callers that inspect the server."""
        return self._conn.client

    @property
    def manifest_key(self) -> str:
        """The key of the manifest (JSON) beside the index."""
        return f"{self.config.index_name}:manifest"

    @property
    def _transform_key(self) -> str:
        return f"{self.config.index_name}:normalize"

    def key(self, image_id: int) -> str:
        """The key of image ``image_id``'s hash."""
        return f"{self.config.prefix}{int(image_id)}"

    def _call(self, fn, *args, **kwargs):
        """Run one Redis call (:meth:`RedisConnection.call`); hashes :meth:`bulk_load` holds back are
        sent first."""
        if self._held:
            self._send_held()
        return self._conn.call(fn, *args, **kwargs)

    def _pipelined(self, commands: Sequence[tuple[Any, ...]], chunk: int = READ_CHUNK) -> list[Any]:
        if self._held:
            self._send_held()
        return self._conn.pipelined(commands, chunk)

    def _index_info(self) -> dict[str, Any] | None:
        if self._held:
            self._send_held()
        return self._conn.index_info(self.config.index_name)

    def _create_index(self, dim: int) -> None:
        try:
            self._call(self.client.execute_command, *create_command(self.config, dim))
        except self._conn.errors.ResponseError as e:
            if "already exists" not in str(e).lower():
                raise
            # Another writer created it between our FT.INFO and FT.CREATE: check it is the same.
            info = self._index_info()
            if info is not None:
                self.config, self.dim, self._failures_at_open = check_index(
                    info, self.config, dim, self.location
                )
                return
        self.dim = int(dim)
        self._wait_indexed()

    def _wait_indexed(self, timeout: float = 600.0) -> None:
        # A new index over existing hashes (after drop(delete_documents=False)) fills in the background;
        # wait, so that count() and search() see every hash. A new, empty index is done at once.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self._index_info() or {}
            if int(info.get("indexing", 0) or 0) == 0:
                return
            time.sleep(0.05)

    # ---------------------------------------------------------------- writes
    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert vectors and their records.

        Each chunk of :data:`WRITE_CHUNK` hashes is one MULTI/EXEC of ``DEL`` + ``HSET`` per id, so a
        hash is never half-written and a field that became ``None`` does not survive the upsert.

        Parameters
        ----------
        vectors
            (n, dim) float32, L2-normalised.
        records
            One record per row; ids unique within the call.

        Raises
        ------
        ValueError
            Shapes do not match, or an id repeats.
        ConfigError
            The vectors' dimension differs from the index's.
        StoreFullError
            Redis reached its maxmemory (earlier chunks are kept).
        """
        if len({r.id for r in records}) != len(records):
            raise ValueError("duplicate ids in one add() call")
        blobs = self._blobs(vectors, records)
        for start in range(0, len(records), WRITE_CHUNK):
            pipe = self.client.pipeline(transaction=True)
            for blob, rec in zip(blobs[start : start + WRITE_CHUNK], records[start : start + WRITE_CHUNK]):
                key = self.key(rec.id)
                pipe.delete(key)
                pipe.hset(key, mapping=hash_mapping(blob, rec))
            self._call(pipe.execute)

    def bulk_load(self, vectors: np.ndarray, records: Sequence[ImageRecord], batch: int = BULK_BATCH) -> None:
        """Load ``records`` whose ids are not stored yet: one ``HSET`` per hash, ``batch`` hashes per
        pipeline round trip, no MULTI/EXEC and no ``DEL`` (nothing to clear); the server adds each hash
        to the index (FLAT or HNSW) as it arrives.

        Fewer than ``batch`` hashes are held back until more come (a build writes a model batch of 16 at
        a time), and sent by :meth:`flush`, :meth:`close` or the next call that reaches the server, so
        reads see them at once. For an id that may exist use :meth:`add`: a field that became ``None``
        would survive here. Raises as :meth:`add` does; a full server or a lost connection may surface
        at the call that sends the hashes.
        """
        blobs = self._blobs(vectors, records)
        self._held.extend((self.key(rec.id), hash_mapping(blob, rec)) for blob, rec in zip(blobs, records))
        if len(self._held) >= batch:
            self._send_held(batch)

    def _blobs(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> np.ndarray:
        """A write's vectors checked (shape, text fields, dimension; the index is created by the first
        write) and cast to the stored type; empty for no records."""
        vectors = check_batch(vectors, records)
        if not len(records):
            return vectors.astype(self._dtype)
        check_storable(records)
        if self.dim is None:
            self._create_index(vectors.shape[1])
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"vectors are {vectors.shape[1]}-d but {self.location} is {self.dim}-d")
        return vectors.astype(self._dtype)

    def _send_held(self, batch: int = BULK_BATCH) -> None:
        """Send the hashes :meth:`bulk_load` holds, ``batch`` per pipeline round trip; on a failure the
        unsent ones stay held (and the error is raised)."""
        held, self._held = self._held, []
        batch = max(1, batch)
        for start in range(0, len(held), batch):
            pipe = self.client.pipeline(transaction=False)
            for key, mapping in held[start : start + batch]:
                pipe.hset(key, mapping=mapping)
            try:
                self._call(pipe.execute)
            except BaseException:
                # HSET is idempotent: resending a chunk the server partly applied writes the same fields.
                self._held = held[start:] + self._held
                raise

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ``ids``; return how many were present (an id given twice counts once).

        A delete retried after a lost connection may count an id its first try already removed as
        absent; the store's content is right either way.
        """
        keys = sorted({self.key(i) for i in ids})
        removed = 0
        for start in range(0, len(keys), READ_CHUNK):
            removed += int(self._call(self.client.delete, *keys[start : start + READ_CHUNK]))
        return removed

    def flush(self) -> None:
        """Send the hashes :meth:`bulk_load` holds back; a write is then as durable as the server's
        persistence settings (AOF/RDB) make it."""
        if self._held:
            self._send_held()

    def close(self) -> None:
        """Send what :meth:`bulk_load` holds back, then release the connection pool."""
        try:
            self.flush()
        finally:
            self._conn.close()

    def drop(self, delete_documents: bool = True) -> None:
        """Remove the index.

        Parameters
        ----------
        delete_documents
            Also delete every hash under the index's prefix and the manifest; ``False`` keeps them
            (a new index over the same prefix indexes them again).
        """
        args = ["FT.DROPINDEX", self.config.index_name] + (["DD"] if delete_documents else [])
        try:
            self._call(self.client.execute_command, *args)
        except self._conn.errors.ResponseError:
            pass  # no such index: nothing to drop
        if delete_documents:
            # DD removes indexed hashes; this catches any the index skipped, and the manifest.
            keys = self._scan_keys()
            for start in range(0, len(keys), READ_CHUNK):
                self._call(self.client.delete, *keys[start : start + READ_CHUNK])
            self._call(self.client.delete, self.manifest_key, self._transform_key)
        self.dim = None

    # ---------------------------------------------------------------- reads
    def _scan_keys(self) -> list[bytes]:
        # Glob characters in an index name must not widen the match to other indexes' keys.
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self.config.prefix) + "*"
        return self._call(lambda: list(self.client.scan_iter(match=pattern, count=1000)))

    def ids(self) -> np.ndarray:
        """Return every id in the store, sorted, as int64 (a SCAN of the index's keys)."""
        n = len(self.config.prefix)
        ids = [int(text(k)[n:]) for k in self._scan_keys() if text(k)[n:].isdigit()]
        return np.array(sorted(ids), dtype=np.int64)

    def count(self) -> int:
        """Return the number of vectors stored (the index's own count: exact, also right after deletes)."""
        if self.dim is None:
            return 0
        reply = self._call(self.client.execute_command, "FT.SEARCH", self.config.index_name, "*",
                           "LIMIT", 0, 0, "DIALECT", 2)  # fmt: skip
        return int(reply[0])

    def field_values(self, name: str) -> list:
        """Distinct values of metadata field ``name``, sorted (None left out), by a ``GROUPBY``
        aggregation (exact after deletes, where ``FT.TAGVALS`` may still list values of deleted hashes)."""
        if name not in (*RECORD_FIELDS, TAGS_FIELD):
            raise ConfigError(f"no metadata field {name!r}")
        if self.dim is None:
            return []
        reply = self._call(self.client.execute_command, "FT.AGGREGATE", self.config.index_name, "*",
                           "LOAD", 1, f"@{name}", "GROUPBY", 1, f"@{name}", "DIALECT", 2)  # fmt: skip
        values = set()
        for row in reply[1:]:
            value = pairs(row).get(name)
            if value is None:
                continue  # hashes without the field form a group of their own
            raw = text(value)
            if name == TAGS_FIELD:  # a group is one hash's whole list of tags
                values.update(t for t in raw.split(TAG_SEPARATOR) if t)
            else:
                values.add(int(float(raw)) if name in NUMERIC_FIELDS else raw)
        return sorted(values)

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Return the records of ``ids`` (``None`` for an id not in the store).

        Read a chunk at a time, so that only one chunk's raw replies are held beside the records.
        """
        names = (*RECORD_FIELDS, TAGS_FIELD)
        out: list[ImageRecord | None] = []
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            replies = self._pipelined([("HMGET", self.key(i), *names) for i in chunk])
            for image_id, values in zip(chunk, replies):
                fields = dict(zip(names, values))
                # add() always writes "path", so a hash without it is no hash at all.
                out.append(None if fields["path"] is None else hash_record(int(image_id), fields))
        return out

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Return the stored vectors of ``ids`` as (n, dim) float32 (FLOAT16 ones are widened).

        Raises
        ------
        KeyError
            For an id not in the store.
        """
        replies = self._pipelined([("HGET", self.key(i), VECTOR_FIELD) for i in ids])
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        size = (self.dim or 0) * self._dtype.itemsize
        absent, corrupt = [], []
        for row, (image_id, blob) in enumerate(zip(ids, replies)):
            if blob is None:
                absent.append(int(image_id))
            elif len(blob) != size:
                corrupt.append(int(image_id))
            else:
                out[row] = np.frombuffer(blob, dtype=self._dtype)
        if absent:
            exists = self._pipelined([("EXISTS", self.key(i)) for i in absent])
            no_vector = [i for i, e in zip(absent, exists) if int(e)]
            if len(no_vector) < len(absent):
                missing = [i for i, e in zip(absent, exists) if not int(e)]
                raise KeyError(f"id {missing[0]} is not in {self.location}")
            corrupt += no_vector
        if corrupt:
            raise IndexDamagedError(
                f"{self.location}: {len(corrupt)} hashes have a missing or corrupt vector: ids "
                f"{sorted(corrupt)[:20]}",
                ids=tuple(sorted(corrupt)),
            )
        return out

    def damaged_ids(self) -> list[int]:
        """Ids whose hash has no vector, or a vector of the wrong byte length (a full scan)."""
        ids = self.ids()
        size = (self.dim or 0) * self._dtype.itemsize
        lengths = self._pipelined([("HSTRLEN", self.key(i), VECTOR_FIELD) for i in ids])
        return [int(i) for i, n in zip(ids, lengths) if int(n) != size]

    def check(self, full: bool = False) -> list[str]:
        """What is damaged in this Redis index, one line each (empty: sound).

        The schema is checked on open (a mismatch refuses the index). Here: every hash under the prefix
        is indexed (``num_docs`` equals the number of keys), and no write since this store was opened
        failed to index (``hash_indexing_failures`` did not grow). With ``full``, every hash's vector
        is checked: present, and of the index's byte length.
        """
        info = self._index_info()
        keys = self.ids()
        if info is None:
            return [f"{self.location} has {len(keys)} hashes but no search index"] if len(keys) else []
        problems = []
        num_docs = int(info.get("num_docs", 0) or 0)
        errors = pairs(info.get("Index Errors", []))
        last = ""
        if errors.get("last indexing error"):
            last = (f" (last indexing error: {text(errors['last indexing error'])} on key "
                    f"{text(errors.get('last indexing error key', b'?'))})")  # fmt: skip
        if num_docs != len(keys):
            problems.append(
                f"{self.location} holds {len(keys)} hashes but indexes {num_docs}: "
                f"{abs(len(keys) - num_docs)} are not searchable{last}"
            )
        failures = int(info.get("hash_indexing_failures", 0) or 0) - self._failures_at_open
        if failures > 0:
            problems.append(
                f"{self.location} failed to index {failures} hashes written since it was opened{last}"
            )
        if full:
            bad = self.damaged_ids()
            if bad:
                problems.append(
                    f"{self.location}: {len(bad)} hashes have a missing or corrupt vector: ids {bad[:20]}"
                )
        return problems

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """Return, per query row, up to ``k`` hits by descending cosine similarity (ties by id).

        One ``FT.SEARCH ... =>[KNN ...]`` per query, :data:`QUERY_BATCH` queries per round trip. With
        ``max_distance``, the KNN candidates farther than it are dropped (as in the FAISS store), so at
        most ``k`` hits come back and all have ``1 - score <= max_distance``.

        Parameters
        ----------
        queries
            (n, dim) or (dim,) float32.
        k
            Hits per query (fewer when fewer records match).
        where
            Metadata pre-filter.
        max_distance
            Cosine distance bound.

        Returns
        -------
        list of list of Hit
            One list per query row.

        Raises
        ------
        ConfigError
            ``k < 1``, or queries of another dimension.
        ValueError
            A query row is zero or not finite.
        """
        queries = check_queries(queries, k, self.dim)
        if self.dim is None:
            return [[] for _ in queries]
        kk = k + SPARE_CANDIDATES
        if kk > 1000:
            kk = max(1, min(kk, self.count()))  # never ask for more than exists (MAXSEARCHRESULTS)
        commands = knn_commands(self.config, queries.astype(self._dtype), where, kk)
        replies = self._pipelined(commands, QUERY_BATCH)
        return [reply_hits(reply, self.config.prefix, k, max_distance) for reply in replies]

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """Return the manifest stored beside the index, or ``None`` for a new index."""
        raw = self._call(self.client.get, self.manifest_key)
        if raw is None:
            return None
        where = f"{self.manifest_key!r} of {self.location}"
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise IndexDamagedError(
                f"manifest {where} is not valid JSON ({e}): it was damaged or edited"
            ) from e
        return check_manifest(data, where)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Store the manifest as JSON at ``<index_name>:manifest``, sealed with a checksum of its content."""
        self._call(self.client.set, self.manifest_key, json.dumps(seal_manifest(manifest), sort_keys=True))

    def read_transform(self) -> bytes | None:
        """The fitted normalisation (``.npz`` bytes) at ``<index_name>:normalize``, or ``None``."""
        return self._call(self.client.get, self._transform_key)

    def write_transform(self, data: bytes) -> None:
        """Store the fitted normalisation (``.npz`` bytes) beside the manifest."""
        self._call(self.client.set, self._transform_key, data)

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
