"""Taking a folder's snapshot on open: ``index.faiss`` as written, caught up, or rebuilt from the shards.

One function, :func:`take_snapshot`, between the two parts a :class:`~indexer.stores.faiss.store.FaissStore`
holds: what the :class:`~indexer.stores.faiss.folder.ShardFolder` read (its shards, which of them the
snapshot covers, its damage) decides what the :class:`~indexer.stores.faiss.index.SearchIndex` loads,
catches up, rebuilds or leaves to the writer's ``finalize``.
"""

from __future__ import annotations

import logging

import numpy as np

from indexer.stores.faiss.folder import OpenedShards, ShardFolder
from indexer.stores.faiss.index import SearchIndex
from indexer.stores.faiss.rerank import reranks
from indexer.stores.faiss.rerank_file import RERANK
from indexer.stores.faiss.state import INDEX

# The store's own logger: these messages are the store's.
log = logging.getLogger("indexer.stores.faiss.store")


def take_snapshot(folder: ShardFolder, index: SearchIndex, opened: OpenedShards, incremental: bool) -> None:
    """Load ``index.faiss`` into ``index`` when the folder is sound and the snapshot covers its first
    shards and is of the index's kind, catching it up with the shards written after it; otherwise build
    the index from the shards when it is kept up to date while writing (``incremental``), or leave it
    to the writer's ``finalize``. A snapshot that is not exactly what the folder should hold (caught
    up, rebuilt, of another kind, or with a re-rank file that does not match) is marked stale.
    """
    snap = folder.snapshot
    if not folder.damage and opened.covered and snap.kind == index.kind.factory:
        index.load(folder.directory / INDEX)
    later = opened.shards[len(snap.shards) :] if opened.covered else opened.shards
    if index.held and later:
        # A writer killed after its last snapshot: catch up with the shards written since.
        removed = np.array(sorted(folder.ids_written(later) & opened.prefix_ids), dtype=np.int64)
        index.catch_up(removed, folder.live_parts(later))
    if index.held and index.ntotal != len(folder.records):
        index.drop()
    if not index.held and incremental and folder.records:
        index.build()
    if index.kind.factory != snap.kind or not index.held:
        index.mark_stale()
    if reranks(index.kind) and index.held and not index.changed:
        # index.faiss is the snapshot as written: its re-rank file is usable if it matches too.
        if not index.adopt_rerank(snap.rerank, len(folder.records), snap.shards[-1]):
            log.info("%s does not match the shards: it is rebuilt from them", RERANK)
            index.mark_stale()
