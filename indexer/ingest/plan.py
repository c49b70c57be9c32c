"""The plan and the books of a build, shared by both engines (one rule, one place).

:func:`make_plan` lists the images (with a ``--metadata`` table), refuses an empty listing, counts
images without metadata, settles the manifest with every store (model, pooling and preprocessing
checked; the folder and its Redis index bound by one ``index_uid``) and finds the ids already in every
store. :class:`Ledger` keeps the books (indexed, skipped, rejected, duplicate content) in listing order,
so the local and the Ray engine give the same summary. No store client, FAISS, pandas or click here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from indexer.core import csv_safe
from indexer.core.atomic import atomic_write
from indexer.core.config import BuildConfig, NormalizeSpec, PreprocessConfig, fit_on_text
from indexer.core.csv_safe import escape_formula
from indexer.core.errors import ConfigError, DecodeError, EmptyBuildError, IndexMismatchError
from indexer.core.records import ImageRecord
from indexer.images.source_list import SourceList
from indexer.images.sources import SourceItem, SourceProblem, describe_search, iter_sources
from indexer.ingest.prepare import Rejected
from indexer.stores.base import VectorStore
from indexer.stores.binding import bind_stores
from indexer.stores.manifest import build_manifest, check_compatible, record_model_paths
from indexer.vectors.normalize import DEFAULT_EPS, EmbeddingTransform
from indexer.vectors.transform_file import load_transform, normalize_record

log = logging.getLogger(__name__)

REJECTED_CSV = "rejected.csv"
#: ``--normalize`` of a new index when the flag is not given (chosen by the README's measurement).
DEFAULT_NORMALIZE = "none"
#: Images sampled (evenly over the sorted list) to compute a data-set intensity window.
DATASET_WINDOW_IMAGES = 64


@dataclass
class BuildSummary:
    """What a build did. ``complete`` is False when images were rejected."""

    found: int = 0
    indexed: int = 0
    skipped_existing: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    index_count: int = 0
    runtime: str = ""  # where the model ran, e.g. "cpu bf16"
    recovered: int = 0  # Ray: images imported from the shards of a killed run
    without_metadata: int = 0  # images whose names (and no --metadata table) gave no plate/well/site/channel
    stores: list[dict] = field(default_factory=list)  # which stores were written (store_identity)
    store_problems: list[str] = field(default_factory=list)  # the stores' own check after the build
    duplicates_given: int = 0  # files reached twice through the paths given (indexed once; not a failure)
    excluded: int = 0  # names without a channel left out by a --channels selection
    metadata: dict | None = None  # the --metadata table's rows matched, and by which path rule

    @property
    def images_per_second(self) -> float:
        """Indexed images per wall-clock second."""
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        """True when every image found is in the index, and the stores found nothing wrong after the build."""
        return not self.rejected and not self.store_problems

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "found": self.found,
            "indexed": self.indexed,
            "skipped_existing": self.skipped_existing,
            "rejected": len(self.rejected),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "index_count": self.index_count,
            "complete": self.complete,
            "runtime": self.runtime,
            "recovered": self.recovered,
            "without_metadata": self.without_metadata,
            "stores": self.stores,
            "store_problems": list(self.store_problems),
            "duplicates_given": self.duplicates_given,
            "excluded": self.excluded,
            "metadata": self.metadata,
        }


class Ledger:
    """The books of one build, fed in listing order by either engine.

    ``strict`` turns the first rejection into a :class:`DecodeError`. Content seen twice (same bytes,
    same id) is indexed once, under the first path listed; the later ones are rejected as duplicates.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.summary = BuildSummary()
        self._first: dict[int, str] = {}

    def reject(self, path: str, stage: str, reason: str) -> None:
        """Book an unusable image (raises in strict mode)."""
        self.summary.rejected.append(Rejected(path, stage, reason))
        if self.strict:
            raise DecodeError(f"{path}: {reason} (strict mode)")

    def skip_existing(self) -> None:
        """Book an image already in every store."""
        self.summary.skipped_existing += 1

    def admit(self, image_id: int, path: str) -> bool:
        """Book an image to index; ``False`` (and a duplicate rejection) when its content came before."""
        if image_id in self._first:
            self.summary.rejected.append(Rejected(path, "dedupe", f"same content as {self._first[image_id]}"))
            return False
        self._first[image_id] = path
        self.summary.indexed += 1
        return True

    def first_path(self, image_id: int) -> str:
        """The path under which content ``image_id`` was admitted."""
        return self._first[image_id]


@dataclass(frozen=True)
class Plan:
    """What a build will do: the images to prepare, the ids to skip, the preprocessing to use, and the
    normalisation: ``transform`` (fitted, applied to every batch) or ``fit`` (a first build: keep the raw
    vectors, fit on them, then write)."""

    items: Sequence[SourceItem]  # a SourceList: compact, however many images
    existing: frozenset[int]
    preprocess: PreprocessConfig
    transform: EmbeddingTransform | None = None
    fit: dict | None = None  # the manifest's normalize record to fit (kind, eps, fit_on)
    #: Per store (in the order given), the ids it holds that this build does not skip, which it must
    #: upsert; ``None``: any id may be held (``--force``), upsert all. See :func:`new_rows`.
    held: tuple[frozenset[int] | None, ...] = ()


def new_rows(held: frozenset[int] | None, ids: Sequence[int]) -> list[bool]:
    """For each of ``ids``, whether it is new to a store holding ``held`` of the ids a build writes
    (``None``: unknown, every id may be held). A new id may go through the store's ``bulk_load``, any
    other through ``add``.

    Why this is enough for Redis, whose bulk path is ``HSET`` without ``DEL``: ``held`` comes from a
    SCAN of the store's keys made after any earlier (killed) run stopped; each ``HSET`` of that run is
    atomic, so every hash it left is listed, whole or not at all, and the folder's write lock keeps
    another build from adding one since. An id missing from the listing therefore has no hash to leave
    a stale field in. An id the store holds but the build re-embeds (the other store lacks it, after a
    kill between the two writes, or it was repaired without metadata) is upserted with ``add``: its
    new record may lack a field the old one had (same content, renamed file, another metadata table).
    """
    if held is None:
        return [False] * len(ids)
    return [int(i) not in held for i in ids]


def write_batch(
    store: VectorStore, held: frozenset[int] | None, vectors: np.ndarray, records: Sequence[ImageRecord]
) -> None:
    """Write one batch to ``store``: ids it may hold with ``add`` (upsert), the others with ``bulk_load``
    (both engines write through this; ``held`` as :func:`new_rows` takes it)."""
    new = np.array(new_rows(held, [r.id for r in records]), dtype=bool)
    if new.all():
        store.bulk_load(vectors, records)
    elif not new.any():
        store.add(vectors, records)
    else:
        old_rows, new_rows_ = np.flatnonzero(~new), np.flatnonzero(new)
        store.add(vectors[old_rows], [records[i] for i in old_rows])
        store.bulk_load(vectors[new_rows_], [records[i] for i in new_rows_])


def settle_normalize(requested: NormalizeSpec, stored: dict | None) -> dict:
    """The manifest's ``normalize`` record for this build: the stored one for an existing index (a
    different ``--normalize``, ridge or subset is refused), else a new, not yet fitted one.

    Raises
    ------
    IndexMismatchError
        The flags differ from the index's manifest (the message names the field).
    """
    have = normalize_record(stored)
    had = NormalizeSpec.from_record(have)
    # A first build that stopped before its fit (a --fit-on that matched too few images) fitted nothing:
    # its re-run may ask again, the flags it leaves out taken from the record.
    if stored is not None and had.kind != "none" and not have.get("sha256"):
        requested = NormalizeSpec(
            kind=requested.kind or had.kind,
            eps=had.eps if requested.eps is None else requested.eps,
            fit_on=requested.fit_on or had.fit_on,
        )
        stored = None
    if stored is not None:
        asked = {"kind": requested.kind, "eps": requested.eps, "fit_on": requested.fit_on}
        for key, value in asked.items():
            if value is not None and (key != "eps" or had.kind == "whiten") and getattr(had, key) != value:
                shown = fit_on_text(value) if key == "fit_on" else value
                raise IndexMismatchError(
                    f"normalize.{key}: the index has {have.get(key)!r}, this run asks for {shown!r}. The "
                    "transform is fitted once, at the first build: omit --normalize to reuse it, or build a "
                    "new index (another --index folder)."
                )
        return have
    kind = requested.kind or DEFAULT_NORMALIZE
    eps = DEFAULT_EPS if requested.eps is None else requested.eps
    return replace(requested, kind=kind, eps=eps).to_record()


def load_table(config: BuildConfig):
    """The build's ``--metadata`` table (:class:`~indexer.images.metadata_table.MetadataTable`), or None.

    Raises
    ------
    ConfigError
        A table that cannot be read or holds a bad value.
    """
    if config.sources.metadata is None:
        return None
    from indexer.images.metadata_table import load_metadata_table

    return load_metadata_table(config.sources.metadata)


def list_items(config: BuildConfig, table=None) -> tuple[SourceList, list[SourceProblem]]:
    """List the images of a build: items (with any ``--metadata`` table applied) and listing problems.

    ``table``: the build's table, already loaded (:func:`load_table`; loaded here when not given), so
    that the caller can say how its rows matched.

    The items are collected as they are found into a :class:`~indexer.images.source_list.SourceList` (a few
    bytes per image besides its path), never held as one object each.

    Raises
    ------
    EmptyBuildError
        When nothing at all was found: the message says where, and what was looked for.
    ConfigError
        A missing path, a bad metadata table, or a table none of whose rows names an image found.
    """
    problems: list[SourceProblem] = []
    if table is None and config.sources.metadata is not None:
        table = load_table(config)
    items = SourceList.collect(iter_sources(config.sources, problems, table))
    if not items and not any(p.kind == "rejected" for p in problems):
        raise EmptyBuildError(f"no images found: {describe_search(config.sources)}. Nothing was written.")
    if table is not None and table.rows and items and not table.used:
        # A table that describes nothing is a wrong path column, not a plate without metadata.
        raise ConfigError(
            table.nothing_matched([items[i].path for i in range(min(3, len(items)))], len(items))
        )
    if table is not None and table.unmatched:
        log.warning(
            "%d of %d paths in the metadata table %s match no image found (e.g. %s)",
            len(table.unmatched),
            len(table.rows),
            table.source,
            table.unmatched[0],
        )
    return items, problems


def count_without_metadata(items: Sequence[SourceItem], table: Path | None = None) -> int:
    """Log one warning, with a count and an example, for images without metadata; return the count.

    ``table``: the ``--metadata`` table given, if any (the warning then says its rows missed them).
    """
    bare, example = 0, None
    for it in items:  # counted, not collected: every image of a large plate may lack metadata
        if not it.meta.described:
            bare += 1
            example = example or it.path
    if bare and table is not None:
        log.warning(
            "%d of %d images have no row in the metadata table %s and names that do not follow the "
            "BBBC006 pattern (e.g. %s): they are indexed without plate, well, site or channel. Add their "
            "paths to the table to describe them.",
            bare,
            len(items),
            table,
            example,
        )
    elif bare:
        log.warning(
            "%d of %d images have names that do not follow the BBBC006 pattern (e.g. %s): they are indexed "
            "without plate, well, site or channel, so filters on those fields will not find them. Give a "
            "table with --metadata to add it.",
            bare,
            len(items),
            example,
        )
    return bare


def check_not_empty(summary: BuildSummary, index_dir: Path) -> None:
    """Raise :class:`EmptyBuildError` when images were found but none could be used and the index is empty."""
    if summary.found and summary.index_count == 0 and summary.indexed == 0 and summary.rejected:
        raise EmptyBuildError(
            f"none of the {summary.found} images found could be used, so the index is empty; the reasons "
            f"are listed in {Path(index_dir) / REJECTED_CSV}"
        )


def store_location(store: VectorStore) -> str:
    """Where a store lives, for messages (a folder, or a Redis index; never a password)."""
    return str(getattr(store, "location", type(store).__name__))


def compute_dataset_window(items: Sequence[SourceItem], low: float, high: float) -> tuple[float, float]:
    """Pool pixel samples of up to :data:`DATASET_WINDOW_IMAGES` images spread over ``items``.

    Raises
    ------
    EmptyBuildError
        No image, or none of the sampled ones decodes.
    """
    from indexer.images.decode import decode_plane
    from indexer.model.preprocess import dataset_window, sample_pixels

    if not items:
        raise EmptyBuildError("no images found to compute a data-set intensity window from")
    step = max(1, len(items) // DATASET_WINDOW_IMAGES)
    chosen = items[::step][:DATASET_WINDOW_IMAGES]
    samples = []
    for item in chosen:
        try:
            plane = decode_plane(item.read(), 0)  # a stack's first page alone, not its thousand planes
        except (DecodeError, OSError):
            continue
        if plane is not None:
            samples.append(sample_pixels(plane.image))
    if not samples:
        raise EmptyBuildError(
            f"none of the {len(chosen)} images sampled for the data-set intensity window (--intensity "
            f"dataset) could be decoded (e.g. {chosen[0].path}); check the files, or use --intensity percentile"
        )
    return dataset_window(samples, low, high)


def resolve_build_preprocess(
    config: BuildConfig, encoder, items: Sequence[SourceItem], stored_manifest: dict | None
) -> PreprocessConfig:
    """The preprocessing of this build: model-given fields from the encoder; a data-set window reused
    from the stored manifest when resuming, else computed from the images."""
    from indexer.model.encoder import resolve_preprocess

    pre = resolve_preprocess(encoder, config.preprocess)
    inten = pre.intensity
    if inten.mode == "dataset" and inten.window is None:
        stored = (stored_manifest or {}).get("preprocess", {}).get("intensity", {})
        if stored.get("mode") == "dataset" and stored.get("window"):
            window = tuple(stored["window"])
        else:
            window = compute_dataset_window(items, inten.low, inten.high)
        pre = replace(pre, intensity=replace(inten, window=window))
    return pre


def settle_manifest(
    config: BuildConfig, encoder, items: Sequence[SourceItem], stores: Sequence[VectorStore]
) -> tuple[PreprocessConfig, dict]:
    """The manifest handshake: check this run's settings against every store's manifest, write the
    manifest where there is none (the folder and its Redis index bound by one ``index_uid``), and
    return the preprocessing to use.

    Raises
    ------
    IndexMismatchError
        A store was built with another model, pooling or preprocessing (the message names the field),
        or the Redis index holds another folder's data.
    """
    stored = stores[0].read_manifest() if stores else None
    pre = resolve_build_preprocess(config, encoder, items, stored)
    model = record_model_paths(encoder.info, config.index_dir)
    manifest = build_manifest(model, config.model.pooling, pre.to_dict(), encoder.dim)
    manifests = [store.read_manifest() for store in stores]
    if stores and manifests[0] is None and stores[0].count():
        # Its vectors' model and preprocessing are unknown, and a new manifest would give the folder a
        # new index uid under which its shards read as another index's.
        raise IndexMismatchError(
            f"the index at {store_location(stores[0])} holds {stores[0].count()} images but no manifest: "
            "the model and preprocessing that made them are unknown. Restore its manifest.json, or build "
            "into a new --index folder"
        )
    for store, have in zip(stores, manifests):
        check_compatible(have, manifest, store_location(store))
    manifest["normalize"] = settle_normalize(config.normalize, stored)
    bind_stores(stores, manifests, manifest)
    return pre, manifest["normalize"]


def settle_transform(
    stores: Sequence[VectorStore], record: dict
) -> tuple[EmbeddingTransform | None, dict | None]:
    """The fitted transform every store holds (the same in each), or the record still to fit.

    Raises
    ------
    IndexMismatchError
        A store lacks the transform, holds another one, or holds vectors but no fitted transform.
    """
    if record.get("kind", "none") == "none":
        return None, None
    if not record.get("sha256"):
        if any(store.count() for store in stores):
            raise IndexMismatchError(
                f"the index at {store_location(stores[0])} holds vectors but its --normalize "
                f"{record['kind']} transform was never fitted: rebuild it into a new --index folder"
            )
        return None, record
    first = stores[0]
    transform = load_transform(first, first.read_manifest(), store_location(first))
    for store in stores[1:]:
        if store.read_transform() is None:  # a Redis index added to a folder later gets the folder's
            store.write_transform(first.read_transform())
        load_transform(store, store.read_manifest(), store_location(store))
    return transform, None


def make_plan(
    config: BuildConfig,
    stores: Sequence[VectorStore],
    encoder,
    ledger: Ledger,
    items: Sequence[SourceItem] | None = None,
    problems: Sequence[SourceProblem] = (),
) -> Plan:
    """Plan a build: list (or take ``items``), book listing problems, settle the manifest, find the
    ids already in every store (none with ``config.force``).

    Raises
    ------
    EmptyBuildError
        Nothing found.
    DecodeError
        Strict mode and a listing problem.
    IndexMismatchError
        See :func:`settle_manifest`.
    """
    problems = list(problems)
    if items is None:
        items, problems = list_items(config)
    items = SourceList.collect(items)  # as it is when listed here; a caller's list (benchmarks) collected
    book_listing(ledger, items, problems)
    ledger.summary.without_metadata = count_without_metadata(items, config.sources.metadata)
    pre, record = settle_manifest(config, encoder, items, stores)
    transform, fit = settle_transform(stores, record) if stores else (None, None)
    existing, held = index_state(stores, config.force)
    return Plan(items=items, existing=frozenset(existing), preprocess=pre, transform=transform, fit=fit,
                held=held)  # fmt: skip


def book_listing(ledger: Ledger, items: Sequence[SourceItem], problems: Sequence[SourceProblem]) -> None:
    """Book what the listing found: listing problems rejected (raises in strict mode), files given twice
    and names left out by ``--channels`` counted apart (they are not failures)."""
    summary = ledger.summary
    rejected = [p for p in problems if p.kind == "rejected"]
    summary.found = len(items) + len(rejected)
    summary.duplicates_given = sum(p.kind == "duplicate" for p in problems)
    summary.excluded = sum(p.kind == "excluded" for p in problems)
    for p in rejected:
        ledger.reject(p.path, "list", p.reason)


def already_indexed(stores: Sequence[VectorStore], force: bool = False) -> set[int]:
    """Ids a build skips: in every store, and with metadata in the first (FAISS) one.

    ``mae-index repair`` can recover an image's vector from ``index.faiss`` without its path and
    metadata; such an image counts as not indexed, so the same build restores it.
    """
    return index_state(stores, force)[0]


def index_state(
    stores: Sequence[VectorStore], force: bool = False
) -> tuple[set[int], tuple[frozenset[int] | None, ...]]:
    """The ids a build skips (:func:`already_indexed`) and, per store, the ids it holds that the build
    does not skip (to upsert, not bulk-load: :func:`new_rows`); ``None`` for every store with ``force``.

    Each store's ids are listed once; the sets kept are those of a killed run's leftovers (small), or
    of a store added to an index later (every id of the other one).
    """
    if force or not stores:
        return set(), (None,) * len(stores)
    listed = [set(store.ids().tolist()) for store in stores]
    existing = set.intersection(*listed)
    existing -= {r.id for r in stores[0].get(sorted(existing)) if r is not None and not r.path}
    return existing, tuple(frozenset(ids - existing) for ids in listed)


def write_rejected(index_dir: Path, rejected: Sequence[Rejected]) -> None:
    """Write ``rejected.csv`` (path, stage, reason) in the index folder, atomically.

    A failure (often the full disk that stopped the build) is logged, never raised: it must not hide
    the error that stopped the build.
    """

    def write(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv_safe.writer(f)  # a path holding \r or \n is quoted, not split over two rows
            w.writerow(["path", "stage", "reason"])
            for r in rejected:
                w.writerow([escape_formula(r.path), r.stage, escape_formula(r.reason)])

    try:
        atomic_write(Path(index_dir) / REJECTED_CSV, write)
    except OSError as e:
        log.warning("could not write %s: %s", REJECTED_CSV, e.strerror or e)
