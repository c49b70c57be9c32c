"""Vector stores: one :class:`~indexer.stores.base.VectorStore` protocol, FAISS and Redis implementations,
and :func:`open_stores`, the one way build, query, serve, eval, verify and sync open them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from indexer.core.errors import ConfigError

if TYPE_CHECKING:  # the stores import FAISS, pandas and redis: only when opened
    from indexer.core.config import RedisConfig
    from indexer.stores.base import VectorStore


class OpenStores(tuple):
    """The stores opened by :func:`open_stores`, FAISS first: iterate them, or name ``faiss``/``redis``.

    A context manager: leaving the ``with`` block closes every store (FAISS flushes its writes).
    """

    faiss: VectorStore | None
    redis: VectorStore | None

    def __new__(cls, faiss: VectorStore | None, redis: VectorStore | None) -> OpenStores:
        self = super().__new__(cls, tuple(s for s in (faiss, redis) if s is not None))
        self.faiss, self.redis = faiss, redis
        return self

    @property
    def primary(self) -> VectorStore:
        """The store that answers queries: Redis when opened, else the FAISS folder."""
        return self.redis if self.redis is not None else self.faiss

    def close(self) -> None:
        """Close every store, the first error re-raised after all are closed."""
        error: BaseException | None = None
        for store in self:
            try:
                store.close()
            except BaseException as e:  # close the rest before re-raising
                error = error or e
        if error is not None:
            raise error

    def __enter__(self) -> OpenStores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stores(
    index_dir: Path | None,
    redis: RedisConfig | None = None,
    *,
    dim: int | None = None,
    read_only: bool = False,
    backend: str | None = None,
    pair_check: str = "full",
    wait: bool = True,
    faiss_store: VectorStore | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    rerank: int | None = None,
) -> OpenStores:
    """Open the FAISS store at ``index_dir`` and the Redis store of ``redis``, as a caller asks.

    Parameters
    ----------
    index_dir
        The FAISS index folder; ``None`` opens no FAISS store.
    redis
        The Redis index; ``None`` opens no Redis store.
    dim
        The vector dimension a writer will add (creates a new index; checked against an existing one).
    read_only
        Open the FAISS folder for queries only (it must exist).
    backend
        ``"faiss"`` or ``"redis"`` opens only that store (a query's choice); ``None`` opens both that
        are given.
    pair_check
        For readers given a folder and a Redis index: ``"full"`` refuses a Redis index that is not the
        folder's (by index uid, else by count and ids); ``"uid"`` by uid only (verify, which reports
        counts itself); ``"off"``. A build checks the pair when it settles the manifest.
    wait
        A FAISS writer waits for another writer of the folder (else fails at once with
        :class:`~indexer.core.errors.IndexBusyError`).
    faiss_store
        A FAISS store the caller already opened on ``index_dir`` (a build takes the folder's lock
        before it loads the model), used instead of opening another.
    nprobe, ef_search, rerank
        A FAISS reader's search parameters, overriding the ones its manifest records.

    Returns
    -------
    OpenStores
        FAISS first, then Redis.

    Raises
    ------
    ConfigError
        The asked-for backend has no folder or URL, or nothing at all was given.
    """
    if backend not in (None, "faiss", "redis"):
        raise ConfigError(f"unknown store backend {backend!r}: use faiss or redis")
    if backend == "redis" and redis is None:
        raise ConfigError("--backend redis needs --redis-url (or MAE_REDIS_URL)")
    if backend == "faiss" and index_dir is None:
        raise ConfigError("--index DIR is required for the FAISS backend")
    if index_dir is None and redis is None:
        raise ConfigError("give an index folder (--index DIR) or a Redis URL (--redis-url)")
    faiss = redis_store = None
    if index_dir is not None and backend != "redis":
        from indexer.stores.faiss.store import FaissStore

        faiss = faiss_store or FaissStore(
            index_dir,
            dim=dim,
            read_only=read_only,
            wait=wait,
            nprobe=nprobe,
            ef_search=ef_search,
            rerank=rerank,
        )
        if faiss_store is not None and dim is not None:
            faiss_store.expect_dim(dim)
    if redis is not None and backend != "faiss":
        from indexer.stores.redis.store import RedisStore

        try:
            redis_store = RedisStore(redis, dim=dim)
            if read_only and index_dir is not None and pair_check != "off":
                from indexer.stores.binding import check_folder_pair

                check_folder_pair(index_dir, redis_store, faiss, by_count=pair_check == "full")
        except BaseException:
            if faiss is not None:
                faiss.close()
            if redis_store is not None:
                redis_store.close()
            raise
    return OpenStores(faiss, redis_store)
