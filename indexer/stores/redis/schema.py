"""The Redis index's schema and hash layout, pure: what ``FT.CREATE`` is sent, whether an existing index
is one this tool can use, and how a record is written to and read back from its hash.

No connection here: :class:`~indexer.stores.redis.store.RedisStore` sends what this builds and passes in
the replies it gets. The field names and the tag syntax are :mod:`indexer.stores.redis.query`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from indexer.core.config import RedisConfig
from indexer.core.errors import IndexMismatchError
from indexer.core.records import RECORD_FIELDS, Hit, ImageRecord, MetadataFilter
from indexer.stores.base import DISTANCE_SLACK, rank_hits
from indexer.stores.redis.query import (
    DISTANCE_FIELD,
    NUMERIC_FIELDS,
    TAG_FIELDS,
    TAG_SEPARATOR,
    TAGS_FIELD,
    VECTOR_FIELD,
    pairs,
    query_params,
    render_filter,
    text,
)

#: The fields this tool's queries need, and their types; an index of the same name with others is refused.
EXPECTED_FIELDS = {
    **dict.fromkeys((*TAG_FIELDS, TAGS_FIELD), "TAG"),
    **dict.fromkeys(NUMERIC_FIELDS, "NUMERIC"),
}


def create_command(config: RedisConfig, dim: int) -> list[Any]:
    """The ``FT.CREATE`` command of a new index of ``dim``-d vectors with ``config``'s settings."""
    vector = ["TYPE", config.dtype, "DIM", int(dim), "DISTANCE_METRIC", "COSINE"]
    if config.algorithm == "HNSW":
        vector += ["M", config.m, "EF_CONSTRUCTION", config.ef_construction, "EF_RUNTIME", config.ef_runtime]
    schema: list[Any] = []
    for name in (*TAG_FIELDS, TAGS_FIELD):
        schema += [name, "TAG", "SEPARATOR", TAG_SEPARATOR, "CASESENSITIVE"]
    for name in NUMERIC_FIELDS:
        schema += [name, "NUMERIC"]
    schema += [VECTOR_FIELD, "VECTOR", config.algorithm, len(vector), *vector]
    return ["FT.CREATE", config.index_name, "ON", "HASH", "PREFIX", 1, config.prefix, "SCHEMA", *schema]


def schema_problems(attributes: Iterable[Any]) -> list[str]:
    """Compare an ``FT.INFO`` attribute list with :data:`EXPECTED_FIELDS` (names, types, tag options)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for attr in attributes:
        raw = [text(v) for v in attr]
        fields = {k.lower(): v for k, v in pairs(attr).items()}
        name = text(fields.get("attribute", fields.get("identifier", "")))
        found[name] = (text(fields.get("type", "")).upper(), raw)
    problems = []
    for name, kind in EXPECTED_FIELDS.items():
        if name not in found:
            problems.append(f"no {kind} field {name!r}")
            continue
        have, raw = found[name]
        if have != kind:
            problems.append(f"field {name!r} of type {have} (this tool needs {kind})")
        elif kind == "TAG":
            separator = raw[raw.index("SEPARATOR") + 1] if "SEPARATOR" in raw[:-1] else ","
            if separator != TAG_SEPARATOR or "CASESENSITIVE" not in raw:
                problems.append(
                    f"tag field {name!r} with other options (this tool needs SEPARATOR \\x1f CASESENSITIVE)"
                )
    return problems


def check_index(
    info: dict[str, Any], config: RedisConfig, dim: int | None, location: str
) -> tuple[RedisConfig, int, int]:
    """Check an existing index (its ``FT.INFO``) against ``config`` and, for a writer, ``dim``.

    Returns ``(config, dim, failures)``: ``config`` with the index's own algorithm, type and HNSW
    settings (a reader adopts them; a writer has just been checked against them), the index's DIM, and
    its ``hash_indexing_failures`` so far.

    Raises
    ------
    IndexMismatchError
        Not an index of this tool, or one with other settings than asked for.
    """
    definition = pairs(info.get("index_definition", []))
    prefixes = [text(p) for p in definition.get("prefixes", [])]
    vector: dict[str, str] | None = None
    for attr in info.get("attributes", []):
        fields = {k.lower(): text(v) for k, v in pairs(attr).items()}
        if fields.get("identifier") == VECTOR_FIELD or fields.get("attribute") == VECTOR_FIELD:
            vector = fields
    if vector is None or vector.get("type", "VECTOR").upper() != "VECTOR":
        raise IndexMismatchError(
            f"{location} exists but has no VECTOR field {VECTOR_FIELD!r}: it is not an index of "
            "this tool. Use another --redis-index name."
        )
    problems = []
    if config.prefix not in prefixes or text(definition.get("key_type", "HASH")).upper() != "HASH":
        problems.append(f"keys {prefixes} of type {text(definition.get('key_type'))} "
                        f"(this tool uses HASH keys under {config.prefix!r})")  # fmt: skip
    problems += schema_problems(info.get("attributes", []))
    if vector.get("distance_metric", "COSINE").upper() != "COSINE":
        problems.append(f"distance metric {vector.get('distance_metric')} (this tool uses COSINE)")
    have_dim = int(vector.get("dim", 0))
    have_algorithm = vector.get("algorithm", config.algorithm).upper()
    have_dtype = vector.get("data_type", config.dtype).upper()
    if dim is not None:
        if have_dim != int(dim):
            problems.append(f"DIM {have_dim} (this model gives {dim})")
        if have_algorithm != config.algorithm:
            problems.append(f"algorithm {have_algorithm} (asked for {config.algorithm})")
        if have_dtype != config.dtype:
            problems.append(f"type {have_dtype} (asked for {config.dtype})")
    if problems:
        raise IndexMismatchError(
            f"{location} already exists with "
            + ", ".join(problems)
            + ". Use another --redis-index name, or drop this one first (it deletes its vectors): "
            f"`mae-index drop-redis --redis-index {config.index_name}`."
        )
    adopt: dict[str, Any] = {"algorithm": have_algorithm, "dtype": have_dtype}
    if have_algorithm == "HNSW":
        for key, name in (("m", "m"), ("ef_construction", "ef_construction")):
            if vector.get(name, "").isdigit():
                adopt[key] = int(vector[name])
    failures = int(info.get("hash_indexing_failures", 0) or 0)
    return replace(config, **adopt), have_dim, failures


def hash_mapping(blob: np.ndarray, rec: ImageRecord) -> dict[str, Any]:
    """The fields of ``rec``'s hash: its vector bytes, its metadata (``None`` fields left out), its tags."""
    mapping: dict[str, Any] = {VECTOR_FIELD: blob.tobytes(), "path": str(rec.path)}
    for name in RECORD_FIELDS:
        value = getattr(rec, name)
        if value is not None and name != "path":
            mapping[name] = int(value) if name in NUMERIC_FIELDS else str(value)
    if rec.tags:
        mapping[TAGS_FIELD] = TAG_SEPARATOR.join(rec.tag_strings)
    return mapping


def hash_record(image_id: int, fields: dict[str, Any]) -> ImageRecord:
    """The record of a hash's ``fields`` (as read back: bytes or str)."""
    kw: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        value = fields.get(name)
        if value is not None:
            if name in NUMERIC_FIELDS:
                kw[name] = int(float(text(value)))
            else:
                # A plate has one plate name, 384 wells, 2 channels: one string each, not one per
                # record read back (mae-eval holds every record). Paths are distinct: not for them.
                kw[name] = text(value) if name == "path" else sys.intern(text(value))
    kw.setdefault("path", "")
    tags = fields.get(TAGS_FIELD)
    if tags:
        kw["tags"] = text(tags).split(TAG_SEPARATOR)
    return ImageRecord(id=int(image_id), **kw)


def knn_commands(config: RedisConfig, blobs: np.ndarray, where: MetadataFilter | None, k: int) -> list[tuple]:
    """One ``FT.SEARCH ... =>[KNN k ...]`` command per query vector (``blobs``, of the stored type):
    the filter's prefix, sorted by distance, returning the distance and every record field."""
    prefix, params = render_filter(where)
    hnsw = config.algorithm == "HNSW"
    ef = " EF_RUNTIME $EF" if hnsw else ""
    query = f"{prefix}=>[KNN $K @{VECTOR_FIELD} $BLOB{ef} AS {DISTANCE_FIELD}]"
    returned = [DISTANCE_FIELD, *RECORD_FIELDS, TAGS_FIELD]
    commands = []
    for blob in blobs:
        p = {**params, "K": k, "BLOB": blob.tobytes()}
        if hnsw:
            p["EF"] = max(config.ef_runtime, k)
        commands.append(("FT.SEARCH", config.index_name, query, *query_params(p),
                         "SORTBY", DISTANCE_FIELD, "ASC", "LIMIT", 0, k,
                         "RETURN", len(returned), *returned, "DIALECT", 2))  # fmt: skip
    return commands


def reply_hits(reply: list[Any], prefix: str, k: int, max_distance: float | None) -> list[Hit]:
    """The hits of one KNN ``FT.SEARCH`` reply (keys under ``prefix``): score ``1 - distance``, those
    beyond ``max_distance`` dropped, ranked as every store ranks, at most ``k``."""
    n = len(prefix)
    ids, scores, records = [], [], {}
    for key, values in zip(reply[1::2], reply[2::2]):
        fields = pairs(values)
        distance = float(text(fields[DISTANCE_FIELD]))
        if max_distance is not None and distance > max_distance + DISTANCE_SLACK:
            continue
        image_id = int(text(key)[n:])
        ids.append(image_id)
        scores.append(1.0 - distance)
        records[image_id] = hash_record(image_id, fields)
    return rank_hits(np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float64), records, k)
