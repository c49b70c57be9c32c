"""The streamed build: sources -> worker threads (read, hash, decode, preprocess) -> batches -> encoder
-> writer thread (stores). Memory is bounded by the number of images in flight, not the data-set size.

This module only wires the stages, times them and keeps the books (indexed, skipped, rejected); each
stage lives in its own module.
"""

from __future__ import annotations

import csv
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from indexer.atomic import atomic_write
from indexer.config import BuildConfig, PreprocessConfig
from indexer.decode import content_id, decode_tiff, image_source
from indexer.encoder import Encoder, load_encoder, resolve_preprocess
from indexer.errors import DecodeError, MaeError
from indexer.preprocess import dataset_window, preprocess, preprocess_image, sample_pixels
from indexer.sources import SourceItem, iter_sources
from indexer.stores.base import ImageRecord, VectorStore
from indexer.stores.manifest import build_manifest, check_compatible

log = logging.getLogger(__name__)

REJECTED_CSV = "rejected.csv"
#: Images sampled (evenly over the sorted list) to compute a data-set intensity window.
DATASET_WINDOW_IMAGES = 64


@dataclass(frozen=True)
class Rejected:
    """An image that could not be indexed, with the stage that failed and a one-line reason."""

    path: str
    stage: str
    reason: str


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

    @property
    def images_per_second(self) -> float:
        """Indexed images per wall-clock second."""
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        """True when every image found is in the index."""
        return not self.rejected

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
        }


@dataclass
class _Prepared:
    record: ImageRecord
    pixels: torch.Tensor | None = None  # preprocessed (3, h, w), CPU path
    raw: np.ndarray | None = None  # decoded counts, device path
    skipped: bool = False
    rejected: Rejected | None = None
    seconds: float = 0.0


def _record(item: SourceItem, image_id: int) -> ImageRecord:
    m = item.meta
    return ImageRecord(
        id=image_id,
        path=item.path,
        plate=m.plate,
        well=m.well,
        row=m.row,
        column=m.column,
        site=m.site,
        channel=m.channel,
        z=m.z,
    )


def store_location(store: VectorStore) -> str:
    """Where a store lives, for messages (a folder, or a Redis index; never a password)."""
    return str(getattr(store, "location", type(store).__name__))


def prepare_item(
    item: SourceItem,
    preprocess_config: PreprocessConfig,
    existing: frozenset[int] | set[int],
    on_device: bool,
) -> _Prepared:
    """Read, hash, decode and (on the CPU path) preprocess one item. Never raises for a bad image."""
    t0 = time.perf_counter()
    stage = "read"
    try:
        data = item.read()
        image_id = content_id(data)
        record = _record(item, image_id)
        if image_id in existing:
            return _Prepared(record, skipped=True, seconds=time.perf_counter() - t0)
        stage = "decode"
        image = decode_tiff(data)
        record = replace(record, source=image_source(data))
        if on_device:
            return _Prepared(record, raw=image, seconds=time.perf_counter() - t0)
        stage = "preprocess"
        pixels = preprocess_image(image, preprocess_config)
        return _Prepared(record, pixels=pixels, seconds=time.perf_counter() - t0)
    except DecodeError as e:
        reason = str(e)
    except OSError as e:
        reason = f"cannot read file: {e.strerror or e}"
    except Exception as e:  # one bad image must never stop a build of thousands
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    rec = ImageRecord(id=-1, path=item.path)
    return _Prepared(rec, rejected=Rejected(item.path, stage, reason), seconds=time.perf_counter() - t0)


def _single_threaded_torch() -> None:
    # torch's OpenMP pool belongs to the calling thread: left alone, every decode worker's preprocessing
    # starts a pool of its own, and with more pool threads than cores libgomp stops spin-waiting, which
    # slows the model's forward pass on the main thread. The thread count set here is this thread's only.
    torch.set_num_threads(1)


def _bounded_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator:
    """Ordered ``map`` over a thread pool with at most ``window`` items in flight (bounded memory)."""
    with ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="mae-decode", initializer=_single_threaded_torch
    ) as pool:
        pending: queue.SimpleQueue[Future] = queue.SimpleQueue()
        in_flight = 0
        it = iter(items)
        for item in it:
            pending.put(pool.submit(fn, item))
            in_flight += 1
            if in_flight >= window:
                yield pending.get().result()
                in_flight -= 1
        while in_flight:
            yield pending.get().result()
            in_flight -= 1


class _Writer:
    """Writes batches to every store on its own thread, so store I/O overlaps the next forward pass."""

    def __init__(self, stores: Sequence[VectorStore], flush_every: int) -> None:
        self.stores = stores
        self.flush_every = flush_every
        self.seconds = 0.0
        self.written = 0
        self._since_flush = 0
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mae-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is not None:
                continue
            vectors, records = job
            t0 = time.perf_counter()
            try:
                for store in self.stores:
                    store.add(vectors, records)
                self.written += len(records)
                self._since_flush += len(records)
                if self._since_flush >= self.flush_every:
                    for store in self.stores:
                        store.flush()
                    self._since_flush = 0
            except BaseException as e:  # surfaced in the main thread by put()/close()
                self._error = e
            self.seconds += time.perf_counter() - t0

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, vectors: np.ndarray, records: list[ImageRecord]) -> None:
        """Queue a batch (blocks while 4 batches wait: back-pressure keeps memory bounded)."""
        self._raise()
        self._queue.put((vectors, records))

    def close(self) -> None:
        """Write what is queued, flush every store, and re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise()
        t0 = time.perf_counter()
        for store in self.stores:
            store.flush()
        self.seconds += time.perf_counter() - t0


def compute_dataset_window(items: Sequence[SourceItem], low: float, high: float) -> tuple[float, float]:
    """Pool pixel samples of up to :data:`DATASET_WINDOW_IMAGES` images spread over ``items``."""
    if not items:
        raise MaeError("no images found to compute a data-set intensity window from")
    step = max(1, len(items) // DATASET_WINDOW_IMAGES)
    samples = []
    for item in items[::step][:DATASET_WINDOW_IMAGES]:
        try:
            samples.append(sample_pixels(decode_tiff(item.read())))
        except (DecodeError, OSError):
            continue
    return dataset_window(samples, low, high)


def resolve_build_preprocess(
    config: BuildConfig, encoder: Encoder, items: Sequence[SourceItem], stored_manifest: dict | None
) -> PreprocessConfig:
    """The preprocessing of this build: model-given fields from the encoder; a data-set window reused
    from the stored manifest when resuming, else computed from the images."""
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


def write_rejected(index_dir: Path, rejected: Sequence[Rejected]) -> None:
    """Write ``rejected.csv`` (path, stage, reason) in the index folder, atomically."""

    def write(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "stage", "reason"])
            for r in rejected:
                w.writerow([r.path, r.stage, r.reason])

    atomic_write(Path(index_dir) / REJECTED_CSV, write)


def build_index(
    config: BuildConfig,
    stores: Sequence[VectorStore],
    encoder: Encoder | None = None,
    progress: Callable[[int], None] | None = None,
    items: Sequence[SourceItem] | None = None,
) -> BuildSummary:
    """Embed every image of ``config.sources`` not yet in all ``stores`` and upsert it into each.

    Parameters
    ----------
    config
        The build configuration.
    stores
        Open stores to write (the FAISS store first; Redis too when configured).
    encoder
        A loaded encoder; loaded from ``config.model`` when omitted.
    progress
        Called with the number of images finished after each one (for a progress bar).
    items
        Images to index instead of listing ``config.sources`` (benchmarks, other sources).

    Returns
    -------
    BuildSummary

    Raises
    ------
    IndexMismatchError
        If a store was built with another model or preprocessing.
    DecodeError
        In ``strict`` mode, for the first image that cannot be used.
    """
    t_start = time.perf_counter()
    encoder = encoder or load_encoder(config.model)
    problems: list = []
    items = list(iter_sources(config.sources, problems)) if items is None else list(items)
    summary = BuildSummary(
        found=len(items) + len(problems), runtime=f"{encoder.device.type} {encoder.precision}"
    )
    summary.rejected.extend(Rejected(p.path, "list", p.reason) for p in problems)
    if config.strict and summary.rejected:
        r = summary.rejected[0]
        raise DecodeError(f"{r.path}: {r.reason} (strict mode)")

    stored = stores[0].read_manifest() if stores else None
    pre = resolve_build_preprocess(config, encoder, items, stored)
    manifest = build_manifest(encoder.info, config.model.pooling, pre.to_dict(), encoder.dim)
    for store in stores:
        check_compatible(store.read_manifest(), manifest, store_location(store))
    for store in stores:
        if store.read_manifest() is None:
            store.write_manifest(manifest)

    existing: set[int] = set()
    if not config.force and stores:
        existing = set(stores[0].ids().tolist())
        for store in stores[1:]:
            existing &= set(store.ids().tolist())
    on_device = encoder.device.type == "cuda"
    seen: dict[int, str] = {}
    writer = _Writer(stores, config.flush_every)
    timings = {"read_decode_preprocess": 0.0, "model": 0.0}
    batch: list[_Prepared] = []

    def run_batch() -> None:
        t0 = time.perf_counter()
        if on_device:
            raws = [p.raw for p in batch]
            if len({r.shape for r in raws}) == 1:
                x = torch.from_numpy(np.stack(raws).astype(np.int32)).pin_memory()
                pixels = preprocess(x.to(encoder.device, non_blocking=True), pre)
            else:
                pixels = torch.stack([preprocess_image(r, pre) for r in raws])
        else:
            shapes = {tuple(p.pixels.shape) for p in batch}
            if len(shapes) == 1:
                pixels = torch.stack([p.pixels for p in batch])
            else:  # keep-aspect with mixed input sizes: one forward per size
                pixels = None
        if pixels is None:
            vectors = np.concatenate([encoder.embed(p.pixels.unsqueeze(0)) for p in batch])
        else:
            vectors = encoder.embed(pixels)
        timings["model"] += time.perf_counter() - t0
        writer.put(vectors, [p.record for p in batch])
        summary.indexed += len(batch)
        batch.clear()

    frozen_existing = frozenset(existing)
    window = max(2 * config.batch_size, 4 * config.workers)

    def work(item: SourceItem) -> _Prepared:
        return prepare_item(item, pre, frozen_existing, on_device)

    done = 0
    try:
        for prepared in _bounded_map(work, items, config.workers, window):
            timings["read_decode_preprocess"] += prepared.seconds
            done += 1
            if prepared.rejected is not None:
                summary.rejected.append(prepared.rejected)
                if config.strict:
                    r = prepared.rejected
                    raise DecodeError(f"{r.path}: {r.reason} (strict mode)")
            elif prepared.skipped:
                summary.skipped_existing += 1
            elif prepared.record.id in seen:
                summary.rejected.append(
                    Rejected(prepared.record.path, "dedupe", f"same content as {seen[prepared.record.id]}")
                )
            else:
                seen[prepared.record.id] = prepared.record.path
                batch.append(prepared)
                if len(batch) >= config.batch_size:
                    run_batch()
            if progress:
                progress(done)
        if batch:
            run_batch()
    finally:
        writer.close()
        if stores:
            write_rejected(getattr(stores[0], "directory", config.index_dir), summary.rejected)
    timings["write"] = writer.seconds
    summary.stage_seconds = timings
    summary.seconds = time.perf_counter() - t_start
    summary.index_count = stores[0].count() if stores else 0
    return summary
