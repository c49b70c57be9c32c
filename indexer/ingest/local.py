"""The local engine: sources -> worker threads (read, hash, decode, preprocess) -> batches -> encoder
-> writer thread (stores). Memory is bounded by the files and prepared planes in flight
(:mod:`indexer.ingest.stream`), not by the data-set size or a stack's plane count.

This module only wires the stages and times them; the plan and the books (indexed, skipped, rejected,
duplicates) are :mod:`indexer.ingest.plan`'s, shared with the Ray engine, one item's work is
:func:`indexer.ingest.prepare.prepare_planes`, and the writer thread is :mod:`indexer.ingest.writer`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from indexer.core.config import BuildConfig, NormalizeSpec
from indexer.core.errors import ConfigError, MaeError
from indexer.core.records import ImageRecord
from indexer.images.sources import SourceItem
from indexer.ingest.plan import BuildSummary, Ledger, make_plan, write_rejected
from indexer.ingest.prepare import Prepared, prepare_planes
from indexer.ingest.stream import PlaneBudget, stream_planes
from indexer.ingest.turns import Turns
from indexer.ingest.writer import StoreWriter, queue_vectors
from indexer.model.encoder import Encoder, load_encoder
from indexer.model.preprocess import preprocess, preprocess_image, standardise
from indexer.stores.base import VectorStore

log = logging.getLogger(__name__)


def _single_threaded_torch() -> None:
    # Each decode worker runs torch with one thread: left alone, every worker's preprocessing starts an
    # OpenMP pool of its own, and with more pool threads than cores libgomp stops spin-waiting, which
    # slows the model's forward pass. torch reads a process-wide default when a thread first uses it,
    # and set_num_threads() writes that default too: get_num_threads() first settles this thread's own
    # count, so that the model thread resetting the default later (model_threads) cannot undo it.
    torch.get_num_threads()
    torch.set_num_threads(1)


def model_threads(wanted: int) -> int:
    """Give the calling thread (the one that runs the forward) ``wanted`` torch threads; return its count.

    A decode worker's ``set_num_threads(1)`` also lowers torch's process-wide default, which a thread
    that has not used torch yet takes on first use: the model would then run on one core.
    """
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


def plane_window(config: BuildConfig) -> int:
    """How many files a build starts ahead of the model, and how many prepared planes it holds at once
    across them (:class:`~indexer.ingest.stream.PlaneBudget`; the batch being filled comes on top)."""
    return max(2 * config.batch_size, 4 * config.workers)


def fit_and_write(
    record: dict,
    held: list[tuple[np.ndarray, list[ImageRecord]]],
    stores: Sequence[VectorStore],
    writer: StoreWriter,
    batch_size: int,
) -> None:
    """Fit the normalisation of a first build on its raw vectors (or the ``--fit-on`` subset), store it
    and its fingerprint in every store, then queue the transformed vectors for writing.

    The transform and manifest are written before any vector, so a store never holds vectors that its
    manifest's transform did not make.

    Raises
    ------
    ConfigError
        The ``--fit-on`` subset holds fewer than 2 of the images.
    """
    from indexer.vectors.normalize import fit_transform
    from indexer.vectors.transform_file import encode_transform, fitted_record

    vectors = np.concatenate([v for v, _ in held])
    records = [r for _, rs in held for r in rs]
    where = NormalizeSpec.from_record(record).fit_on
    chosen = vectors if where is None else vectors[[where.matches(r) for r in records]]
    if where is not None and len(chosen) < 2:
        raise ConfigError(
            f"--fit-on {record['fit_on']} matches {len(chosen)} of the {len(records)} images: the "
            "normalisation needs at least 2 to fit on"
        )
    # A record without a ridge rule was written before the relative ridge: its eps is absolute.
    transform = fit_transform(
        chosen, record["kind"], record.get("eps") or 0.0, record.get("ridge", "absolute")
    )
    data = encode_transform(transform)
    fitted = fitted_record(transform, record.get("fit_on"))
    for store in stores:
        store.write_transform(data)
        store.write_manifest({**store.read_manifest(), "normalize": fitted})
    log.info("fitted --normalize %s on %d of %d vectors", record["kind"], len(chosen), len(records))
    held.clear()
    queue_vectors(writer, vectors, records, transform, batch_size)


def build_index(
    config: BuildConfig,
    stores: Sequence[VectorStore],
    encoder: Encoder | None = None,
    progress: Callable[[int], None] | None = None,
    items: Sequence[SourceItem] | None = None,
    problems: Sequence = (),
    after_checkpoint: Callable[[], object] | None = None,
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
        Images to index instead of listing ``config.sources`` (benchmarks, other sources, or a listing
        the caller already made: listing 52,224 files twice costs seconds).
    problems
        The listing problems that came with ``items``.
    after_checkpoint
        Called on the writer thread after each checkpoint (``mae-index build``: hand freed memory back
        to the kernel, :func:`indexer.ingest.heap.release_free_memory`).

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
    # The forward runs on this thread with the thread count it has now, before any decode worker starts
    # (a worker's set_num_threads(1) lowers the default a fresh thread would take).
    threads = torch.get_num_threads()
    encoder = encoder or load_encoder(config.model)
    ledger = Ledger(config.strict)
    summary = ledger.summary
    plan = make_plan(config, stores, encoder, ledger, items, problems)
    summary.runtime = encoder.runtime
    pre = plan.preprocess
    on_device = encoder.device.type == "cuda"
    writer = StoreWriter(stores, config.flush_every, plan.held, after_checkpoint)
    timings = {"read_decode_preprocess": 0.0, "model": 0.0}
    batch: list[Prepared] = []
    held: list[tuple[np.ndarray, list[ImageRecord]]] = []

    # On a CPU decoding and the forward take turns (indexer.ingest.turns); on a GPU they overlap.
    turns = Turns(not (on_device if config.decode_during_forward is None else config.decode_during_forward))

    def run_batch() -> None:
        with turns.forward():
            forward()

    def forward() -> None:
        t0 = time.perf_counter()
        got = model_threads(threads)
        if got != threads:  # never silently run the model on fewer cores than the process has
            raise MaeError(f"the model thread runs with {got} torch threads, not {threads}")
        if on_device:
            raws = [p.raw for p in batch]
            if len({(r.shape, r.dtype.kind) for r in raws}) == 1:
                # Counts as int32 (exact histogram percentiles), float images as float32.
                dtype = np.float32 if raws[0].dtype.kind == "f" else np.int32
                x = torch.from_numpy(np.stack(raws).astype(dtype)).pin_memory()
                pixels = preprocess(x.to(encoder.device, non_blocking=True), pre)
            else:
                pixels = torch.stack([preprocess_image(r, pre) for r in raws])
        else:
            shapes = {tuple(p.pixels.shape) for p in batch}
            if len(shapes) == 1:
                pixels = standardise(torch.stack([p.pixels for p in batch]), pre)
            else:  # keep-aspect with mixed input sizes: one forward per size
                pixels = None
        if pixels is None:
            vectors = np.concatenate([encoder.embed(standardise(p.pixels[None], pre)) for p in batch])
        else:
            vectors = encoder.embed(pixels)
        timings["model"] += time.perf_counter() - t0
        records = [p.record for p in batch]
        if plan.fit is not None:  # a first --normalize build: fit on every raw vector before writing
            held.append((vectors, records))
        else:
            queue_vectors(writer, vectors, records, plan.transform)
        batch.clear()

    # Files started ahead, and prepared planes held, across all files (a stack is many planes).
    window = plane_window(config)
    budget = PlaneBudget(window, head_slack=config.batch_size)

    def work(item: SourceItem) -> Iterator[Prepared]:
        return prepare_planes(item, pre, plan.existing, on_device)

    done = 0
    try:
        streams = stream_planes(
            work, plan.items, config.workers, window, budget, turns.decode, _single_threaded_torch
        )
        for planes in streams:
            for prepared in planes:  # one per plane: a stack gives several images
                timings["read_decode_preprocess"] += prepared.seconds
                if prepared.rejected is not None:
                    r = prepared.rejected
                    ledger.reject(r.path, r.stage, r.reason)
                elif prepared.skipped:
                    ledger.skip_existing()
                elif ledger.admit(prepared.record.id, prepared.record.path):
                    batch.append(prepared)
                    if len(batch) >= config.batch_size:
                        run_batch()
            done += 1
            if progress:
                progress(done)
        if batch:
            run_batch()
        if plan.fit is not None and held:
            fit_and_write(plan.fit, held, stores, writer, config.batch_size)
    finally:
        try:
            writer.close()
        finally:
            model_threads(threads)  # leave torch's default as this build found it
            if stores:
                write_rejected(config.index_dir, summary.rejected)
    timings["write"] = writer.seconds
    summary.stage_seconds = timings
    summary.seconds = time.perf_counter() - t_start
    summary.index_count = stores[0].count() if stores else 0
    return summary
