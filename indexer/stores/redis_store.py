"""The Redis store: Redis Query Engine (Redis Stack 7.2+ / Redis 8) vector search over HASH keys.

Schema (index ``<name>``, keys ``<name>:img:<id>``): TAG plate, well, row, channel, path (case-sensitive,
with a separator no value contains, so a value is one tag whatever its punctuation); NUMERIC column,
site, z; VECTOR ``vector`` FLAT or HNSW (M, EF_CONSTRUCTION, EF_RUNTIME), FLOAT32 or FLOAT16, COSINE,
DIM from the model. The manifest is JSON at ``<name>:manifest``.

Queries are KNN with ``DIALECT 2`` and ``LIMIT 0 k``; the vector and the numbers are query parameters,
and every tag value is escaped, so no user text changes a query's meaning. Redis returns a cosine
*distance*; this store reports ``score = 1 - distance`` (cosine similarity), like the FAISS store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from indexer.config import RedisConfig
from indexer.errors import ConfigError, IndexMismatchError, StoreFullError, StoreUnavailableError
from indexer.stores.base import RECORD_FIELDS, Hit, ImageRecord, MetadataFilter, rank_hits

TAG_FIELDS = ("plate", "well", "row", "channel", "path")
NUMERIC_FIELDS = ("column", "site", "z")
#: Tag separator: the ASCII unit separator, which no path or plate name contains.
TAG_SEPARATOR = "\x1f"
_ESCAPE = re.compile(r"([^A-Za-z0-9_\u0080-\U0010ffff])")
_CHUNK = 500


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def escape_tag(value: str) -> str:
    """Escape a tag value for a query: every ASCII character but letters, digits and ``_`` gets a
    backslash, so spaces, braces, ``|``, ``-``, ``@``, quotes and ``*`` are literal."""
    return _ESCAPE.sub(r"\\\1", str(value))


def render_filter(where: MetadataFilter | None) -> tuple[str, dict[str, Any]]:
    """Render a filter as a query prefix and its numeric parameters (``*`` when empty)."""
    if where is None or where.is_empty:
        return "*", {}
    parts: list[str] = []
    params: dict[str, Any] = {}
    for name in TAG_FIELDS:
        values = getattr(where, name)
        if values:
            parts.append(f"@{name}:{{{' | '.join(escape_tag(v) for v in values)}}}")
    for name in NUMERIC_FIELDS:
        values = getattr(where, name)
        if values:
            alts = []
            for i, v in enumerate(values):
                key = f"{name}_{i}"
                params[key] = int(v)
                alts.append(f"@{name}:[${key} ${key}]")
            parts.append("(" + " | ".join(alts) + ")")
    if where.z_min is not None or where.z_max is not None:
        params["z_lo"] = where.z_min if where.z_min is not None else "-inf"
        params["z_hi"] = where.z_max if where.z_max is not None else "+inf"
        parts.append("@z:[$z_lo $z_hi]")
    return "(" + " ".join(parts) + ")", params


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisStore:
    """A :class:`~indexer.stores.base.VectorStore` on Redis vector search.

    Parameters
    ----------
    config
        Connection and index settings.
    dim
        Vector dimension; the index is created on first use when it does not exist.
    """

    def __init__(self, config: RedisConfig, dim: int | None = None) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.config = config
        self._redis = redis
        self._dtype = np.float16 if config.dtype == "FLOAT16" else np.float32
        try:
            self.client = redis.Redis.from_url(
                config.url,
                socket_timeout=config.socket_timeout,
                socket_connect_timeout=config.socket_timeout,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), config.retries),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            )
        except ValueError as e:
            raise ConfigError(f"invalid Redis URL {redact_url(config.url)}: {e}") from e
        self._check_server()
        self.dim = dim
        info = self._index_info()
        if info is None:
            if dim is None:
                manifest = self.read_manifest()
                self.dim = manifest["dim"] if manifest else None
            if self.dim is not None:
                self._create_index(self.dim)
        else:
            self._check_index(info, dim)

    # ---------------------------------------------------------------- plumbing
    @property
    def location(self) -> str:
        """Index name and server, for messages (no password)."""
        return f"Redis index {self.config.index_name!r} at {redact_url(self.config.url)}"

    def _call(self, fn, *args, **kwargs):
        """Run a Redis call, turning connection, auth and memory errors into project errors."""
        r = self._redis
        try:
            return fn(*args, **kwargs)
        except r.AuthenticationError as e:
            raise StoreUnavailableError(
                f"Redis at {redact_url(self.config.url)} refused the credentials"
            ) from e
        except (r.ConnectionError, r.TimeoutError) as e:
            raise StoreUnavailableError(
                f"cannot reach Redis at {redact_url(self.config.url)} after {self.config.retries} retries: "
                f"{type(e).__name__}; start it (scripts/redis-stack.sh start, or docker compose up -d redis)"
            ) from e
        except r.ResponseError as e:
            msg = str(e)
            if msg.startswith("OOM") or "maxmemory" in msg:
                raise StoreFullError(
                    f"Redis at {redact_url(self.config.url)} is full (maxmemory reached): {msg}. Raise maxmemory, "
                    "use --redis-dtype FLOAT16, or another Redis; nothing already written is lost"
                ) from e
            raise

    def _check_server(self) -> None:
        modules = self._call(self.client.module_list)
        names = {_s(m.get(b"name", m.get("name", ""))).lower() for m in modules}
        if "search" not in names and "searchlight" not in names:
            version = _s(self._call(self.client.info, "server").get("redis_version", "?"))
            if not version.startswith(("8.", "9.")):
                raise StoreUnavailableError(
                    f"Redis at {redact_url(self.config.url)} (version {version}) has no vector search: it needs "
                    "Redis Stack 7.2+ or Redis 8. Start one with scripts/redis-stack.sh or docker-compose.yml"
                )

    def _ft(self):
        return self.client.ft(self.config.index_name)

    def _key(self, image_id: int) -> str:
        return f"{self.config.prefix}{int(image_id)}"

    def _index_info(self) -> dict | None:
        try:
            return self._call(self._ft().info)
        except self._redis.ResponseError as e:
            if "unknown index" in str(e).lower() or "no such index" in str(e).lower():
                return None
            raise

    def _create_index(self, dim: int) -> None:
        from redis.commands.search.field import NumericField, TagField, VectorField
        from redis.commands.search.index_definition import IndexDefinition, IndexType

        c = self.config
        attrs: dict[str, Any] = {"TYPE": c.dtype, "DIM": int(dim), "DISTANCE_METRIC": "COSINE"}
        if c.algorithm == "HNSW":
            attrs.update(M=c.m, EF_CONSTRUCTION=c.ef_construction, EF_RUNTIME=c.ef_runtime)
        fields = [TagField(f, separator=TAG_SEPARATOR, case_sensitive=True) for f in TAG_FIELDS]
        fields += [NumericField(f) for f in NUMERIC_FIELDS]
        fields.append(VectorField("vector", c.algorithm, attrs))
        definition = IndexDefinition(prefix=[c.prefix], index_type=IndexType.HASH)
        try:
            self._call(self._ft().create_index, fields, definition=definition)
        except self._redis.ResponseError as e:
            if "already exists" not in str(e).lower():
                raise
        self.dim = int(dim)

    def _check_index(self, info: dict, dim: int | None) -> None:
        vector = None
        for attr in info.get("attributes", []):
            flat = [_s(a) for a in attr]
            d = dict(zip(flat[::2], flat[1::2]))
            if d.get("identifier") == "vector" or d.get("attribute") == "vector":
                vector = {k.lower(): v for k, v in d.items()}
        if vector is None:
            raise IndexMismatchError(
                f"{self.location} exists but has no 'vector' field: not an index of this tool"
            )
        have_dim = int(vector.get("dim", 0))
        if dim is None:
            # Opening an existing index to read it (queries, verify, sync): take its own settings.
            self.config = replace(
                self.config,
                algorithm=vector.get("algorithm", self.config.algorithm).upper(),
                dtype=vector.get("data_type", self.config.dtype).upper(),
            )
            self._dtype = np.float16 if self.config.dtype == "FLOAT16" else np.float32
            self.dim = have_dim
            return
        problems = []
        if dim is not None and have_dim != dim:
            problems.append(f"DIM {have_dim} (this model gives {dim})")
        if vector.get("algorithm", self.config.algorithm).upper() != self.config.algorithm:
            problems.append(f"algorithm {vector.get('algorithm')} (asked for {self.config.algorithm})")
        if vector.get("data_type", self.config.dtype).upper() != self.config.dtype:
            problems.append(f"type {vector.get('data_type')} (asked for {self.config.dtype})")
        if problems:
            raise IndexMismatchError(
                f"{self.location} already exists with "
                + ", ".join(problems)
                + ". Use another --redis-index name, or drop that index first."
            )
        self.dim = have_dim

    # ---------------------------------------------------------------- writes
    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert vectors and records; each chunk is one MULTI/EXEC, so a hash is never half-written."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(records):
            raise ValueError("vectors must be (n, dim) with one record per row")
        if not len(records):
            return
        if self.dim is None:
            self._create_index(vectors.shape[1])
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"vectors are {vectors.shape[1]}-d but {self.location} is {self.dim}-d")
        for start in range(0, len(records), _CHUNK):
            pipe = self.client.pipeline(transaction=True)
            for vec, rec in zip(vectors[start : start + _CHUNK], records[start : start + _CHUNK]):
                mapping: dict[str, Any] = {"vector": vec.astype(self._dtype).tobytes()}
                for f in RECORD_FIELDS:
                    v = getattr(rec, f)
                    if v is not None:
                        mapping[f] = int(v) if f in NUMERIC_FIELDS else str(v)
                key = self._key(rec.id)
                pipe.delete(key)  # a field that became None must not survive the upsert
                pipe.hset(key, mapping=mapping)
            self._call(pipe.execute)

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ids; return how many existed."""
        if not len(ids):
            return 0
        return int(self._call(self.client.delete, *[self._key(i) for i in ids]))

    def flush(self) -> None:
        """Nothing to do: each write is durable as Redis is configured (AOF/RDB)."""

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()

    def drop(self, delete_documents: bool = True) -> None:
        """Remove the index (and its hashes and manifest)."""
        try:
            self._call(self._ft().dropindex, delete_documents=delete_documents)
        except self._redis.ResponseError:
            pass
        self._call(self.client.delete, f"{self.config.index_name}:manifest")
        if delete_documents:
            keys = list(self.client.scan_iter(match=f"{self.config.prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                self._call(self.client.delete, *keys[i : i + 1000])
        self.dim = None

    # ---------------------------------------------------------------- reads
    def ids(self) -> np.ndarray:
        """All ids, sorted."""
        n = len(self.config.prefix)
        keys = self._call(lambda: list(self.client.scan_iter(match=f"{self.config.prefix}*", count=1000)))
        return np.array(sorted(int(_s(k)[n:]) for k in keys), dtype=np.int64)

    def count(self) -> int:
        """Number of images stored."""
        return len(self.ids())

    def _fetch(self, ids: Sequence[int]) -> list[dict | None]:
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._key(i))
        return [h or None for h in self._call(pipe.execute)]

    @staticmethod
    def _record(image_id: int, fields: dict) -> ImageRecord:
        d = {_s(k): v for k, v in fields.items() if _s(k) != "vector"}
        kw: dict[str, Any] = {}
        for f in RECORD_FIELDS:
            v = d.get(f)
            if v is None:
                continue
            kw[f] = int(float(_s(v))) if f in NUMERIC_FIELDS else _s(v)
        kw.setdefault("path", "")
        return ImageRecord(id=int(image_id), **kw)

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Records of ``ids`` (``None`` where absent)."""
        return [None if h is None else self._record(i, h) for i, h in zip(ids, self._fetch(ids))]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors (float32); KeyError for a missing id."""
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        for row, (i, h) in enumerate(zip(ids, self._fetch(ids))):
            if h is None:
                raise KeyError(f"id {i} is not in the index")
            out[row] = np.frombuffer(h[b"vector"], dtype=self._dtype)
        return out

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """KNN per query (cosine similarity scores, ties by id), with filter and distance bound."""
        from redis.commands.search.query import Query

        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if self.dim is None:
            return [[] for _ in queries]
        if queries.shape[1] != self.dim:
            raise ConfigError(f"query vectors are {queries.shape[1]}-d, the index is {self.dim}-d")
        prefix, params = render_filter(where)
        kk = k + 8  # spare candidates so ties at the k-th score break by id, as in every store
        ef = " EF_RUNTIME $EF" if self.config.algorithm == "HNSW" else ""
        text = f"{prefix}=>[KNN $K @vector $BLOB{ef} AS distance]"
        q = (Query(text).sort_by("distance").paging(0, kk)
             .return_fields("distance", *RECORD_FIELDS).dialect(2))  # fmt: skip
        out = []
        for vec in queries:
            p = {**params, "K": kk, "BLOB": vec.astype(self._dtype).tobytes()}
            if ef:
                p["EF"] = max(self.config.ef_runtime, kk)
            res = self._call(self._ft().search, q, query_params=p)
            ids, scores, records = [], [], {}
            n = len(self.config.prefix)
            for doc in res.docs:
                image_id = int(doc.id[n:])
                score = 1.0 - float(doc.distance)
                if max_distance is not None and 1.0 - score > max_distance + 1e-6:
                    continue
                ids.append(image_id)
                scores.append(score)
                records[image_id] = self._record(image_id, {f: getattr(doc, f, None) for f in RECORD_FIELDS})
            out.append(
                rank_hits(np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float32), records, k)
            )
        return out

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest stored beside the index, or ``None``."""
        raw = self._call(self.client.get, f"{self.config.index_name}:manifest")
        return json.loads(raw) if raw else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Store the manifest (JSON)."""
        self._call(
            self.client.set, f"{self.config.index_name}:manifest", json.dumps(manifest, sort_keys=True)
        )
