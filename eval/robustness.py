"""Run clean and perturbed queries through the retriever and collect per-query metrics.

For every query image (sampled from the index, seeded) and every perturbation and severity, the
perturbed raw image is embedded with the index's own settings and searched; its results are compared
with the clean query's results. The natural perturbation ``defocus_z`` uses the same site at another
z-slice of the index (severity = |z - 16| slices, 2 um each) instead of a simulated blur.

Both lists are cut from the same gallery: the query's relatives named by ``exclude`` (see
:mod:`eval.gallery`; default its whole site) leave the clean and the perturbed list alike, and so does
the defocused slice of a ``defocus_z`` row. Each row records how many candidates its lists were drawn
from, which sets its chance level. A query with fewer than ``k + 1`` candidates is skipped and listed.

Everything here is deterministic for a given seed: sorted ids, seeded sampling, per-(seed, image,
perturbation, severity) RNGs.

The gallery is read from the index's record columns (:class:`retriever.catalog.Catalog`: the store's own
:class:`~indexer.stores.record_table.RecordTable`, or its mirror's), never as one record object per
indexed image: the query sample, the filter and the exclusions are column reads and group lookups, and
records are made for the queries, their sites' stacks and the hits compared. That keeps an evaluation's
memory and time independent of how many images the index holds beside its queries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval import gallery, intensity, metrics, perturb
from eval.queries import admit_queries, choose_queries, read_queries
from eval.summary import summarise
from indexer.bbbc006.constants import FOCUS_Z
from indexer.core.errors import ConfigError
from indexer.core.records import Hit, ImageRecord, MetadataFilter
from indexer.stores.base import VectorStore
from indexer.stores.recall import recall_at_k
from retriever.catalog import GROUP_KEYS, Catalog
from retriever.search import QueryOptions, Retriever

log = logging.getLogger(__name__)

NATURAL = "defocus_z"
#: Index vectors sampled to estimate the median nearest-neighbour distance (drift normaliser).
NN_SAMPLE = 2000


@dataclass(frozen=True)
class RobustnessConfig:
    """What to evaluate. ``perturbations`` may include ``defocus_z`` (real z-stack pairs)."""

    perturbations: tuple[str, ...] = (*perturb.PERTURBATIONS, NATURAL)
    severities: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    k: int = 10
    n_queries: int = 50
    query_ids: tuple[int, ...] = ()
    seed: int = 0
    rbo_p: float = 0.9
    reference_z: int = FOCUS_Z
    where: MetadataFilter = field(default_factory=MetadataFilter)
    exclude: str = gallery.DEFAULT_EXCLUDE

    def __post_init__(self) -> None:
        if self.exclude not in gallery.EXCLUDE:
            raise ConfigError(f"unknown --exclude {self.exclude!r}; choose from {', '.join(gallery.EXCLUDE)}")
        unknown = [p for p in self.perturbations if p != NATURAL and p not in perturb.PERTURBATIONS]
        if unknown:
            valid = ", ".join([*perturb.PERTURBATIONS, NATURAL])
            raise ConfigError(f"unknown perturbation(s) {', '.join(unknown)}; choose from {valid}")
        if any(not 0 <= s <= 5 for s in self.severities):
            raise ConfigError("severities must be within 0-5")
        if self.k < 1 or self.n_queries < 1:
            raise ConfigError("k and the number of queries must be >= 1")
        if not 0 < self.rbo_p < 1:
            raise ConfigError("RBO p must be in (0, 1)")


@dataclass
class RobustnessResult:
    """Per-query rows, embeddings kept for plots, and run facts."""

    rows: list[dict[str, Any]]
    query_ids: list[int]
    median_nn_distance: float
    clean_vectors: np.ndarray
    perturbed_vectors: dict[tuple[str, int], np.ndarray]
    examples: dict[tuple[str, int], np.ndarray]
    ann_recall: float | None = None
    config: RobustnessConfig | None = None
    gallery: dict[str, Any] = field(default_factory=dict)
    skipped_queries: list[dict[str, str]] = field(default_factory=list)  # {path, reason}: unreadable now

    def summary(self) -> list[dict[str, Any]]:
        """Per (perturbation, severity): means, 95 % intervals, chance levels (see :mod:`eval.summary`)."""
        cfg = self.config or RobustnessConfig()
        return summarise(self.rows, k=cfg.k, p=cfg.rbo_p, seed=cfg.seed)


def _ids(hits: Sequence[Hit], exclude: int | None = None) -> list[int]:
    return [h.id for h in hits if h.id != exclude]


def compare_results(
    source_id: int,
    clean: list[int],
    perturbed: list[int],
    k: int,
    p: float,
    self_list: list[int] | None = None,
) -> dict[str, float | int | None]:
    """Metrics of one perturbed query against its clean counterpart.

    ``clean`` and ``perturbed`` are the two top-k lists with the excluded relatives already removed;
    ``self_list`` (default ``perturbed``) is the perturbed list in which the source image is kept, for
    self-retrieval.
    """
    rank = metrics.self_rank(perturbed if self_list is None else self_list, source_id)
    return {
        "self_rank": rank,
        "self_at_1": float(rank == 1),
        "overlap_at_k": metrics.overlap_at_k(clean, perturbed, k),
        "jaccard_at_k": metrics.jaccard_at_k(clean, perturbed, k),
        "rbo": metrics.rank_biased_overlap(clean[:k], perturbed[:k], p=p),
        "kendall_tau": metrics.kendall_tau_intersection(clean[:k], perturbed[:k]),
    }


@dataclass(frozen=True)
class _Query:
    """One scored query: its record, what leaves its lists, and its clean results (long enough to cut)."""

    record: ImageRecord
    excluded: frozenset[int]
    clean_hits: list[int]


def _row(
    q: _Query, extra: frozenset[int], hits: list[int], n_index: int, cfg: RobustnessConfig
) -> dict[str, Any]:
    # ``extra``: ids that leave both lists for this row only (the defocused slice itself).
    drop = q.excluded | extra
    self_drop = drop - {q.record.id}
    candidates = n_index - len(drop)
    return {
        "candidates": candidates,
        "self_candidates": n_index - len(self_drop),
        **compare_results(
            q.record.id,
            gallery.cut(q.clean_hits, drop, cfg.k),
            gallery.cut(hits, drop, cfg.k),
            cfg.k,
            cfg.rbo_p,
            self_list=gallery.cut(hits, self_drop, cfg.k),
        ),
    }


def run_robustness(
    retriever: Retriever,
    config: RobustnessConfig,
    progress: Callable[[int, int], None] | None = None,
    exact: VectorStore | None = None,
    catalog: Catalog | None = None,
) -> RobustnessResult:
    """Evaluate ``retriever``'s store; ``exact`` (the FAISS mirror) adds ANN recall@k of the store.

    ``catalog`` holds the store's records (default ``Catalog(retriever.store)``; ``mae-eval`` passes one
    with the FAISS mirror, whose record columns a Redis store with the same ids shares).

    Raises
    ------
    ConfigError
        If no query has a gallery of at least ``k + 1`` candidates once its relatives are excluded.
    """
    store = retriever.store
    catalog = catalog or Catalog(store)
    records = catalog.records
    n_index = len(records)
    # Images moved or changed since the build are skipped and listed first (the report names them), so
    # that "none can be read" is the error a user sees when every file has moved.
    chosen, raws_all, unreadable = read_queries(choose_queries(records, config))
    excl = gallery.exclusions_from(catalog.relatives, [r.id for r in chosen], config.exclude)
    queries, raws, skipped = admit_queries(chosen, raws_all, excl, n_index, config)
    # Deep enough that k results survive the largest exclusion (+1 for a defocus slice, +1 for the source).
    opts = QueryOptions(k=min(n_index, config.k + max(len(excl.excluded[r.id]) for r in queries) + 2))
    clean_vec = retriever.embed_arrays(raws)
    clean_hits = retriever.search_vectors(clean_vec, opts)
    qs = [_Query(r, excl.excluded[r.id], _ids(h)) for r, h in zip(queries, clean_hits)]
    nn_scale, spread = _index_scale(records.ids(), store, config.seed)
    # Each image type's full scale (8, 12, 16 bits, float): the perturbations are relative to it.
    kinds = [r.source for r in queries]
    scales = intensity.scales_by_type(
        raws, kinds, [intensity.declared_full_scale_at(r.path) for r in queries]
    )

    synthetic = [p for p in config.perturbations if p != NATURAL]
    tick = _Progress(progress, len(synthetic) * len(config.severities) + (NATURAL in config.perturbations))
    rows, perturbed_vectors, examples = _synthetic_rows(
        retriever, qs, raws, scales, clean_vec, opts, nn_scale, n_index, config, synthetic, tick
    )
    if NATURAL in config.perturbations:
        rows.extend(_defocus_rows(retriever, catalog, qs, clean_vec, config, nn_scale, opts, n_index))
        tick()
    if not rows:  # only defocus_z asked for, and no query has a z-pair: a report would be empty
        raise ConfigError(
            "nothing to compare: defocus_z found no query with its own field of view at another z-slice "
            "(a z-stack: BBBC006 names with z, a --metadata table with site and z, or a multi-plane TIFF); "
            "choose a simulated perturbation, e.g. --perturb gaussian_blur"
        )
    return RobustnessResult(
        rows=rows,
        query_ids=[r.id for r in queries],
        median_nn_distance=float(nn_scale),
        clean_vectors=clean_vec,
        perturbed_vectors=perturbed_vectors,
        examples=examples,
        ann_recall=_ann_recall(store, exact, clean_vec, config.k),
        config=config,
        gallery={
            **_gallery_facts(qs, queries, skipped, excl, n_index, spread, config),
            "intensity_scales": intensity.describe(scales, kinds),
        },
        skipped_queries=unreadable,
    )


class _Progress:
    """Calls ``progress(done, total)`` after each step of a run (nothing when ``progress`` is None)."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)


def _index_scale(ids: np.ndarray, store: VectorStore, seed: int) -> tuple[float, float]:
    """The median nearest-neighbour cosine distance and the median pairwise cosine of the index, on a
    sample of at most :data:`NN_SAMPLE` stored vectors (NaN for fewer than 2)."""
    if len(ids) > NN_SAMPLE:
        ids = np.sort(np.random.default_rng(seed).choice(ids, NN_SAMPLE, replace=False))
    sample_vec = store.get_vectors(ids) if len(ids) > 1 else None
    nn_scale = metrics.median_nn_distance(sample_vec) if sample_vec is not None else float("nan")
    spread = metrics.median_pairwise_cosine(sample_vec) if sample_vec is not None else float("nan")
    return nn_scale, spread


def _synthetic_rows(retriever, qs, raws, scales, clean_vec, opts, nn_scale, n_index, config, synthetic, tick):
    """One row per query, synthetic perturbation and severity; with the perturbed vectors and the first
    query's perturbed image of each (perturbation, severity)."""
    rows: list[dict[str, Any]] = []
    perturbed_vectors: dict[tuple[str, int], np.ndarray] = {}
    examples: dict[tuple[str, int], np.ndarray] = {}
    for name in synthetic:
        for sev in config.severities:
            images = [
                perturb.apply(
                    name,
                    raw,
                    sev,
                    perturb.perturbation_rng(config.seed, q.record.id, name, sev),
                    sc.full_scale,
                )
                for raw, q, sc in zip(raws, qs, scales)
            ]
            examples[(name, sev)] = images[0]
            vec = retriever.embed_arrays(images)
            perturbed_vectors[(name, sev)] = vec
            hits = retriever.search_vectors(vec, opts)
            cos = metrics.cosine_distance(clean_vec, vec)
            l2 = metrics.l2_distance(clean_vec, vec)
            for i, q in enumerate(qs):
                rows.append(
                    {
                        "query_id": q.record.id,
                        "perturbation": name,
                        "severity": sev,
                        "value": perturb.severity_value(name, sev),
                        "identity": sev == 0,
                        "source": q.record.source,
                        **_row(q, frozenset(), _ids(hits[i]), n_index, config),
                        "drift_cosine": float(cos[i]),
                        "drift_l2": float(l2[i]),
                        "drift_normalised": float(metrics.normalised_drift(cos[i], nn_scale)),
                    }
                )
            tick()
    return rows, perturbed_vectors, examples


def _ann_recall(store: VectorStore, exact: VectorStore | None, clean_vec: np.ndarray, k: int) -> float | None:
    """Recall@k of the store's search against ``exact``'s for the clean queries (None without one)."""
    if exact is None:
        return None
    approx = [_ids(h)[:k] for h in store.search(clean_vec, k)]
    truth = [_ids(h)[:k] for h in exact.search(clean_vec, k)]
    return recall_at_k(approx, truth, k)


def _gallery_facts(qs, queries, skipped, excl, n_index, spread, config) -> dict[str, Any]:
    """What the report says about the galleries the lists were drawn from."""
    cands = [n_index - len(q.excluded) for q in qs]
    return {
        "exclude": config.exclude,
        "index_size": n_index,
        "min_candidates": config.k + 1,
        "candidates_min": int(min(cands)),
        "candidates_median": float(np.median(cands)),
        "candidates_max": int(max(cands)),
        "queries_scored": len(qs),
        "queries_skipped": skipped,
        "queries_without_known_group": list(excl.fallback),
        "query_sources": _count(r.source or "unknown" for r in queries),
        "median_pairwise_cosine": float(spread),
    }


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _defocus_rows(retriever, catalog, qs, clean_vec, config, nn_scale, opts, n_index) -> list[dict[str, Any]]:
    store = retriever.store
    # Only the queries' own sites can pair with them: their records, read by group, are all this step
    # makes (a site of BBBC006 is 68 images), whatever the index holds.
    sites = [s for q in qs if (s := catalog.relatives(q.record.id, GROUP_KEYS)) is not None]
    near_ids = np.unique(np.concatenate(sites)) if sites else np.zeros(0, np.int64)
    near = [r for r in catalog.records.get_many(near_ids) if r is not None]
    by_id = {r.id: r for r in near}
    pairs = perturb.z_pairs(near, reference_z=config.reference_z)
    rows = []
    short = 0
    for i, q in enumerate(qs):
        others = sorted(pairs.get(q.record.id, []), key=lambda t: (t[1], t[0]))
        if not others:
            continue
        ids = [o for o, _ in others]
        vec = store.get_vectors(ids)
        hits = retriever.search_vectors(vec, opts)
        cos = metrics.cosine_distance(np.repeat(clean_vec[i : i + 1], len(ids), 0), vec)
        l2 = metrics.l2_distance(np.repeat(clean_vec[i : i + 1], len(ids), 0), vec)
        for j, (other_id, dz) in enumerate(others):
            # The defocused slice is the perturbed query itself: it leaves BOTH lists, or the perturbed
            # list would lose a neighbour (itself, first) that the clean list may keep.
            extra = frozenset({other_id})
            if n_index - len(q.excluded | extra) < config.k + 1:
                short += 1
                continue
            rows.append(
                {
                    "query_id": q.record.id,
                    "perturbation": NATURAL,
                    "severity": int(dz),
                    "value": float(perturb.defocus_offset_um(config.reference_z + dz, config.reference_z)),
                    "identity": False,
                    "slice_id": int(other_id),
                    # Real and synthetic stacks are different experiments: each gets its own curve.
                    "source": by_id[other_id].source,
                    "curve": by_id[other_id].source or "unknown",
                    **_row(q, extra, _ids(hits[j]), n_index, config),
                    "drift_cosine": float(cos[j]),
                    "drift_l2": float(l2[j]),
                    "drift_normalised": float(metrics.normalised_drift(cos[j], nn_scale)),
                }
            )
    if short:
        log.warning("defocus_z: %d slice pairs skipped, their gallery fell below k + 1", short)
    if not rows:
        log.warning("defocus_z: no query has the same site at another z-slice in the index")
    return rows
