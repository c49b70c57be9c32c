"""Which queries an evaluation asks: sampled from the index's record columns (seeded), read from their
recorded paths (a moved or replaced image is skipped and named), and admitted where their gallery holds
at least ``k + 1`` candidates once their relatives are excluded."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from indexer.core.errors import ConfigError, DecodeError, MaeError
from indexer.core.records import ImageRecord
from indexer.images.sources import load_image
from indexer.stores.record_table import RecordTable

if TYPE_CHECKING:  # robustness imports this module: the config is only a type here
    from eval.robustness import RobustnessConfig

log = logging.getLogger("eval.robustness")


def choose_queries(records: RecordTable, config: RobustnessConfig) -> list[ImageRecord]:
    """Sample query records from the index's ``records`` (in id order), seeded; the in-focus slice is
    preferred so that z-pairs exist. Only the chosen ones are made into records."""
    if config.query_ids:
        ids = np.asarray(config.query_ids, dtype=np.int64)
        missing = ids[~records.contains(ids)].tolist()
        if missing:
            raise ConfigError(f"query ids not in the index: {missing[:5]}")
        return records.get_many(ids)
    pool = np.sort(records.matching_ids(config.where))
    focused = pool[records.columns(("z",), ids=pool)["z"] == config.reference_z]
    pool = focused if len(focused) else pool
    if not len(pool):
        raise MaeError("no indexed image matches the query filter")
    rng = np.random.default_rng(config.seed)
    idx = np.sort(rng.choice(len(pool), size=min(config.n_queries, len(pool)), replace=False))
    return records.get_many(pool[idx])


def read_queries(
    records: list[ImageRecord],
) -> tuple[list[ImageRecord], list[np.ndarray], list[dict[str, str]]]:
    """Read and decode the chosen query images from their recorded paths.

    An image moved or changed since the build is skipped and returned in the third list (the CLI warns,
    the report lists it); the evaluation goes on with the rest.

    Raises
    ------
    MaeError
        When none of the images can be read.
    """
    kept, raws, skipped = [], [], []
    for rec in records:
        try:
            raws.append(load_image(rec.path, rec.id))  # a file replaced since the build is skipped
            kept.append(rec)
        except (OSError, DecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            skipped.append({"path": rec.path, "reason": reason})
    if not kept:
        raise MaeError(
            f"none of the {len(records)} query images can be read from the paths the index recorded (moved "
            f"since the build? e.g. {skipped[0]['path']}: {skipped[0]['reason']}). Run from where the "
            "build ran, or rebuild the index where the images are now."
        )
    return kept, raws, skipped


def admit_queries(chosen: list, raws_all: list, excl, n_index: int, config: RobustnessConfig):
    """The queries with a gallery of at least k + 1 candidates once their relatives are excluded, their
    images, and the skipped ones (``{"query_id", "candidates"}``, each logged).

    A query needs k + 1 candidates: with exactly k both lists are the whole gallery and agree by
    construction (chance level 1), so nothing would be measured.

    Raises
    ------
    ConfigError
        No query has enough candidates.
    """
    k = config.k
    if excl.fallback:
        log.warning(
            "%d queries have no known %s (file names say nothing): only the image itself is excluded for them",
            len(excl.fallback), config.exclude,
        )  # fmt: skip
    left = {r.id: n_index - len(excl.excluded[r.id]) for r in chosen}
    skipped = [{"query_id": r.id, "candidates": left[r.id]} for r in chosen if left[r.id] < k + 1]
    queries = [r for r in chosen if left[r.id] >= k + 1]
    if not queries:
        worst = max((left[r.id] for r in chosen), default=0)
        raise ConfigError(
            f"no query has a gallery of at least k + 1 = {k + 1} images: the index holds {n_index}, and "
            f"after excluding each query's own {config.exclude if config.exclude != 'none' else 'nothing'} "
            f"at most {worst} are left; index more images, lower -k, or choose a milder --exclude"
        )
    for s in skipped:
        log.warning(
            "query %d skipped: %d candidates, fewer than k + 1 = %d", s["query_id"], s["candidates"], k + 1
        )
    raws = [raw for r, raw in zip(chosen, raws_all) if left[r.id] >= k + 1]
    return queries, raws, skipped
