"""Which Redis index an index folder mirrors, and the check that a folder and a Redis index belong
together.

An index folder records the Redis index it mirrors in its manifest, ``"redis": {"index": NAME,
"server": URL without secrets}``, and both stores' manifests carry the same ``index_uid``, made once
when the index is created. Readers take the Redis index name from the folder; a new folder gets a
Redis index name of its own (:func:`default_redis_index`), so two folders never share one by
accident; and a folder paired with another folder's Redis index is refused (:func:`check_pair`):
by ``index_uid`` where both have one, else (indexes made before the uid) by count and id set.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from indexer.core.errors import ConfigError, IndexMismatchError

RECORD_KEY = "redis"
UID_KEY = "index_uid"
#: Largest index size whose id sets are compared when no uid tells (a SCAN of every key).
ID_CHECK_LIMIT = 200_000


def new_uid() -> str:
    """A fresh index identity, recorded in both stores' manifests when the index is created."""
    return uuid.uuid4().hex


def default_redis_index(index_dir: Path) -> str:
    """The Redis index name a new folder gets: ``mae-<folder name>-<8 hex of its absolute path>``.

    Letters, digits, ``-`` and ``_`` only, so it is a valid index name and a literal SCAN pattern.
    """
    folder = Path(index_dir).resolve()
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", folder.name)[:32] or "index"
    digest = hashlib.blake2b(str(folder).encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
    return f"mae-{stem}-{digest}"


def recorded_redis_index(manifest: dict[str, Any] | None) -> str | None:
    """The Redis index name a folder's manifest records, or ``None``."""
    record = (manifest or {}).get(RECORD_KEY) or {}
    return record.get("index")


def choose_redis_index(
    index_dir: Path | None, given: str | None, folder_manifest: dict[str, Any] | None, writing: bool
) -> str:
    """The Redis index to use with ``index_dir``: ``given``, else the folder's record, else (for a
    build) a new name of the folder's own.

    Raises
    ------
    ConfigError
        ``given`` differs from the folder's record; or a reader has neither (exit code 2).
    """
    recorded = recorded_redis_index(folder_manifest)
    if given and recorded and given != recorded and folder_manifest is not None:
        # The pair check would refuse it anyway; say it before opening anything.
        raise ConfigError(
            f"the index folder {index_dir} mirrors Redis index {recorded!r}, not {given!r}: omit "
            "--redis-index to use the folder's own, or give another --index folder"
        )
    if given:
        return given
    if recorded:
        return recorded
    if index_dir is None:
        raise ConfigError("give --redis-index NAME, or --index DIR (a folder records its Redis index)")
    if writing:
        return default_redis_index(index_dir)
    raise ConfigError(
        f"the index folder {index_dir} records no Redis index (it was built without Redis, or before "
        "folders recorded theirs): pass --redis-index NAME (the old default was 'mae'), or query the "
        "folder itself with --backend faiss"
    )


def redis_record(name: str, server: str) -> dict[str, str]:
    """The record a folder keeps of its Redis index (``server`` already without secrets)."""
    return {"index": name, "server": server}


def _created(manifest: dict[str, Any]) -> str:
    model = manifest.get("model", {}).get("name")
    return f"created {manifest.get('created', '?')} with model {model!r}"


def check_pair(
    folder: str,
    folder_manifest: dict[str, Any] | None,
    redis: str,
    redis_manifest: dict[str, Any] | None,
    counts: Callable[[], tuple[int, int]] | None = None,
    id_sets: Callable[[], tuple[set[int], set[int]]] | None = None,
) -> None:
    """Refuse a folder and a Redis index that hold different indexes.

    Parameters
    ----------
    folder, redis
        The two stores' locations, for the message.
    folder_manifest, redis_manifest
        Their manifests (``None``: nothing built there yet, which pairs with anything).
    counts, id_sets
        ``(folder, redis)`` counts and id sets, asked for only when the manifests carry no uid.

    Raises
    ------
    IndexMismatchError
        Different uids; or, without uids, different counts or id sets.
    """
    if folder_manifest is None or redis_manifest is None:
        return
    uid_f, uid_r = folder_manifest.get(UID_KEY), redis_manifest.get(UID_KEY)
    hint = (
        "Use the folder's own Redis index (omit --redis-index), or another --index folder; "
        "`mae-index sync --index NEW_DIR --redis-index NAME` makes a folder that mirrors a Redis index."
    )
    if uid_f and uid_r:
        if uid_f != uid_r:
            raise IndexMismatchError(
                f"{redis} holds another index folder's data ({_created(redis_manifest)}), not the index of "
                f"the folder {folder} ({_created(folder_manifest)}). {hint}"
            )
        return
    if counts is not None:
        n_f, n_r = counts()
        if n_f != n_r:
            raise IndexMismatchError(
                f"the folder {folder} holds {n_f} images but {redis} holds {n_r}: they are not one "
                f"index (another index folder's data?). {hint} `mae-index verify` shows the difference."
            )
        if id_sets is not None and n_f <= ID_CHECK_LIMIT:
            ids_f, ids_r = id_sets()
            if ids_f != ids_r:
                raise IndexMismatchError(
                    f"the folder {folder} and {redis} hold {len(ids_f ^ ids_r)} different images: they are "
                    f"not one index (another index folder's data?). {hint}"
                )


def refuse_foreign_redis_index(folder: str, redis: str, redis_manifest: dict[str, Any], count: int) -> None:
    """Refuse building a new folder into a Redis index that already holds an index.

    Raises
    ------
    IndexMismatchError
        Always: the new folder would mirror only part of that Redis index.
    """
    raise IndexMismatchError(
        f"{redis} already holds another index folder's data ({count} images, {_created(redis_manifest)}); "
        f"the new folder {folder} cannot share it. Omit --redis-index (a new folder gets a Redis index of "
        "its own), mirror that index with `mae-index sync --index NEW_DIR --redis-index NAME`, or drop it "
        "with `mae-index drop-redis --redis-index NAME`."
    )


def store_identity(store: Any) -> dict[str, str]:
    """Which store and which index answered: ``{"store": "faiss", "index": folder}`` or
    ``{"store": "redis", "index": name, "server": URL without secrets}``."""
    describe = getattr(store, "identity", None)
    if describe is not None:
        return dict(describe)
    return {"store": type(store).__name__, "index": str(getattr(store, "location", "?"))}


def describe_identity(identity: dict[str, str]) -> str:
    """One line for people: ``FAISS folder runs/idx`` or ``Redis index 'mae-idx-…' at redis://host:6379/0``."""
    if identity.get("store") == "redis":
        return f"Redis index {identity['index']!r} at {identity.get('server', '?')}"
    if identity.get("store") == "faiss":
        return f"FAISS folder {identity['index']}"
    return f"{identity.get('store')} {identity.get('index')}"


def bind_stores(
    stores: Sequence[Any], manifests: Sequence[dict[str, Any] | None], fresh: dict[str, Any]
) -> None:
    """Write the manifests of a build (``stores``: the FAISS folder first, then Redis if any).

    The folder and its Redis index get one manifest with one ``index_uid`` (a folder alone gets one too,
    also one made before uids), and the folder records the Redis index. A Redis index that holds another
    folder's data is refused (nothing is written).

    Raises
    ------
    IndexMismatchError
        The Redis index belongs to another folder (:func:`check_pair`, :func:`refuse_foreign_redis_index`).
    """
    if not stores:
        return
    folder, folder_manifest = stores[0], manifests[0]
    if len(stores) == 1:
        # A folder made before uids gets one too: the Ray engine keeps its shards under it.
        settled = {**(folder_manifest or fresh)}
        settled.setdefault(UID_KEY, new_uid())
        if settled != folder_manifest:
            folder.write_manifest(settled)
        return
    redis, redis_manifest = stores[1], manifests[1]
    if folder_manifest is None and redis_manifest is not None:
        refuse_foreign_redis_index(folder.location, redis.location, redis_manifest, redis.count())
    check_pair(
        folder.location,
        folder_manifest,
        redis.location,
        redis_manifest,
        counts=lambda: (folder.count(), redis.count()),
        id_sets=lambda: (set(folder.ids().tolist()), set(redis.ids().tolist())),
    )
    identity = store_identity(redis)
    settled = {**(folder_manifest or fresh), RECORD_KEY: redis_record(identity["index"], identity["server"])}
    settled.setdefault(UID_KEY, new_uid())  # an index made before uids gets one, in both stores at once
    if settled != folder_manifest:
        folder.write_manifest(settled)
    if settled != redis_manifest:
        redis.write_manifest(settled)


def redis_config_for(
    index_dir: Path | None, url: str | None, given: str | None, writing: bool, **settings: Any
):
    """The :class:`~indexer.core.config.RedisConfig` to use with ``index_dir``: ``None`` without a URL; the
    index name given, else the folder's record, else (a build) a name of the folder's own.

    Raises
    ------
    ConfigError
        See :func:`choose_redis_index`.
    """
    from indexer.core.config import RedisConfig
    from indexer.stores.manifest import read_folder_manifest

    if not url:
        return None
    manifest = read_folder_manifest(index_dir) if index_dir is not None else None
    name = choose_redis_index(index_dir, given, manifest, writing)
    return RedisConfig(url=url, index_name=name, **settings)


def check_folder_pair(
    index_dir: Path, redis_store: Any, faiss_store: Any = None, by_count: bool = True
) -> None:
    """Refuse reading ``index_dir`` together with a Redis index that is not its own (:func:`check_pair`).

    ``by_count`` False checks the uid only (``verify`` reports counts and ids itself).

    Raises
    ------
    StoreUnavailableError
        The folder is no index, or the Redis index holds nothing.
    IndexMismatchError
        The Redis index holds another folder's data.
    """
    from indexer.core.errors import StoreUnavailableError
    from indexer.stores.manifest import read_folder_manifest

    folder_manifest = read_folder_manifest(index_dir)
    if folder_manifest is None:
        raise StoreUnavailableError(
            f"no index at {index_dir}: build one first with `mae-index build DATA --index {index_dir}`"
        )
    redis_manifest = redis_store.read_manifest()
    if redis_manifest is None:
        raise StoreUnavailableError(
            f"{redis_store.location} holds no index, though the folder {index_dir} mirrors it (dropped, or "
            f"another server?). Re-run the build into {index_dir} to fill it, or query the folder with "
            "--backend faiss"
        )
    opened: list = [faiss_store]

    def folder():
        if opened[0] is None:
            from indexer.stores.faiss.store import FaissStore

            opened[0] = FaissStore(index_dir, read_only=True)
        return opened[0]

    check_pair(
        str(index_dir),
        folder_manifest,
        redis_store.location,
        redis_manifest,
        counts=(lambda: (folder().count(), redis_store.count())) if by_count else None,
        id_sets=lambda: (set(folder().ids().tolist()), set(redis_store.ids().tolist())),
    )
