"""Run clean and perturbed queries through the retriever and collect per-query metrics.

For every query image (sampled from the index, seeded) and every perturbation and severity, the
perturbed raw image is embedded with the index's own settings and searched; its results are compared
with the clean query's results. The natural perturbation ``defocus_z`` uses the same site at another
real z-slice of the index (severity = |z - 16| slices, 2 um each) instead of a simulated blur.

Everything here is deterministic for a given seed: sorted ids, seeded sampling, per-(seed, image,
perturbation, severity) RNGs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from eval import metrics, perturb
from indexer.bbbc006.constants import FOCUS_Z
from indexer.errors import ConfigError, DecodeError, MaeError
from indexer.sources import load_image
from indexer.stores.base import Hit, ImageRecord, MetadataFilter, VectorStore
from indexer.stores.recall import recall_at_k
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

    def __post_init__(self) -> None:
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
    skipped_queries: list[dict[str, str]] = field(default_factory=list)  # {path, reason}: unreadable now

    def summary(self) -> list[dict[str, Any]]:
        """Means with bootstrap 95 % CIs per (perturbation, severity)."""
        return metrics.summarise(self.rows)


def choose_queries(store: VectorStore, config: RobustnessConfig) -> list[ImageRecord]:
    """Sample query records (seeded; sorted ids; in-focus slice preferred so z-pairs exist)."""
    records = [r for r in store.get(store.ids()) if r is not None]
    if config.query_ids:
        by_id = {r.id: r for r in records}
        missing = [i for i in config.query_ids if i not in by_id]
        if missing:
            raise ConfigError(f"query ids not in the index: {missing[:5]}")
        return [by_id[i] for i in config.query_ids]
    pool = [r for r in records if config.where.matches(r)]
    focused = [r for r in pool if r.z == config.reference_z]
    pool = focused or pool
    if not pool:
        raise MaeError("no indexed image matches the query filter")
    rng = np.random.default_rng(config.seed)
    idx = np.sort(rng.choice(len(pool), size=min(config.n_queries, len(pool)), replace=False))
    return [pool[i] for i in idx]


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
            raws.append(load_image(rec.path))
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


def _ids(hits: Sequence[Hit], exclude: int | None = None) -> list[int]:
    return [h.id for h in hits if h.id != exclude]


def compare_results(
    source_id: int, clean: list[int], perturbed: list[int], k: int, p: float
) -> dict[str, float | int | None]:
    """Metrics of one perturbed query against its clean counterpart."""
    rank = metrics.self_rank(perturbed, source_id)
    return {
        "self_rank": rank,
        "self_at_1": float(rank == 1),
        "overlap_at_k": metrics.overlap_at_k(clean, perturbed, k),
        "jaccard_at_k": metrics.jaccard_at_k(clean, perturbed, k),
        "rbo": metrics.rank_biased_overlap(clean[:k], perturbed[:k], p=p),
        "kendall_tau": metrics.kendall_tau_intersection(clean[:k], perturbed[:k]),
    }


def run_robustness(
    retriever: Retriever,
    config: RobustnessConfig,
    progress: Callable[[int, int], None] | None = None,
    exact: VectorStore | None = None,
) -> RobustnessResult:
    """Evaluate ``retriever``'s store; ``exact`` (the FAISS mirror) adds ANN recall@k of the store."""
    store = retriever.store
    queries, raws, skipped = read_queries(choose_queries(store, config))
    k = config.k
    opts = QueryOptions(k=k + 1)  # one spare: a defocus_z query finds itself first and is dropped
    clean_vec = retriever.embed_arrays(raws)
    clean_hits = retriever.search_vectors(clean_vec, opts)
    clean_ids = [_ids(h)[:k] for h in clean_hits]

    sample_ids = store.ids()
    if len(sample_ids) > NN_SAMPLE:
        sample_ids = np.sort(np.random.default_rng(config.seed).choice(sample_ids, NN_SAMPLE, replace=False))
    nn_scale = (
        metrics.median_nn_distance(store.get_vectors(sample_ids)) if len(sample_ids) > 1 else float("nan")
    )

    rows: list[dict[str, Any]] = []
    perturbed_vectors: dict[tuple[str, int], np.ndarray] = {}
    examples: dict[tuple[str, int], np.ndarray] = {}
    synthetic = [p for p in config.perturbations if p != NATURAL]
    total = len(synthetic) * len(config.severities) + (NATURAL in config.perturbations)
    done = 0
    for name in synthetic:
        for sev in config.severities:
            images = [
                perturb.apply(name, raw, sev, perturb.perturbation_rng(config.seed, rec.id, name, sev))
                for raw, rec in zip(raws, queries)
            ]
            examples[(name, sev)] = images[0]
            vec = retriever.embed_arrays(images)
            perturbed_vectors[(name, sev)] = vec
            hits = retriever.search_vectors(vec, opts)
            cos = metrics.cosine_distance(clean_vec, vec)
            l2 = metrics.l2_distance(clean_vec, vec)
            for i, rec in enumerate(queries):
                row = {
                    "query_id": rec.id,
                    "perturbation": name,
                    "severity": sev,
                    "value": perturb.severity_value(name, sev),
                    **compare_results(rec.id, clean_ids[i], _ids(hits[i])[:k], k, config.rbo_p),
                    "drift_cosine": float(cos[i]),
                    "drift_l2": float(l2[i]),
                    "drift_normalised": float(metrics.normalised_drift(cos[i], nn_scale)),
                }
                rows.append(row)
            done += 1
            if progress:
                progress(done, total)
    if NATURAL in config.perturbations:
        rows.extend(_defocus_rows(retriever, queries, clean_vec, clean_ids, config, nn_scale))
        done += 1
        if progress:
            progress(done, total)
    ann = None
    if exact is not None:
        approx = [_ids(h)[:k] for h in store.search(clean_vec, k)]
        truth = [_ids(h)[:k] for h in exact.search(clean_vec, k)]
        ann = recall_at_k(approx, truth, k)
    return RobustnessResult(
        rows=rows,
        query_ids=[r.id for r in queries],
        median_nn_distance=float(nn_scale),
        clean_vectors=clean_vec,
        perturbed_vectors=perturbed_vectors,
        examples=examples,
        ann_recall=ann,
        config=config,
        skipped_queries=skipped,
    )


def _defocus_rows(retriever, queries, clean_vec, clean_ids, config, nn_scale) -> list[dict[str, Any]]:
    store = retriever.store
    records = [r for r in store.get(store.ids()) if r is not None]
    pairs = perturb.z_pairs([asdict(r) for r in records], reference_z=config.reference_z)
    rows = []
    k = config.k
    for i, rec in enumerate(queries):
        others = sorted(pairs.get(rec.id, []), key=lambda t: (t[1], t[0]))
        if not others:
            continue
        ids = [o for o, _ in others]
        vec = store.get_vectors(ids)
        hits = retriever.search_vectors(vec, QueryOptions(k=k + 1))
        cos = metrics.cosine_distance(np.repeat(clean_vec[i : i + 1], len(ids), 0), vec)
        l2 = metrics.l2_distance(np.repeat(clean_vec[i : i + 1], len(ids), 0), vec)
        for j, (other_id, dz) in enumerate(others):
            rows.append(
                {
                    "query_id": rec.id,
                    "perturbation": NATURAL,
                    "severity": int(dz),
                    "value": float(perturb.defocus_offset_um(config.reference_z + dz, config.reference_z)),
                    **compare_results(
                        rec.id, clean_ids[i], _ids(hits[j], exclude=other_id)[:k], k, config.rbo_p
                    ),
                    "drift_cosine": float(cos[j]),
                    "drift_l2": float(l2[j]),
                    "drift_normalised": float(metrics.normalised_drift(cos[j], nn_scale)),
                }
            )
    if not rows:
        log.warning("defocus_z: no query has the same site at another z-slice in the index")
    return rows
