"""One item of a build: read, hash, decode and (on the CPU path) preprocess it; both engines call this.

A file gives one result per plane (a stack gives several). A bad file never raises: it comes back as
one rejected result with the stage that failed and a one-line reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from indexer.core.config import PreprocessConfig
from indexer.core.errors import DecodeError
from indexer.core.records import ImageRecord
from indexer.images.decode import Plane, content_id, image_source, iter_planes, plane_id
from indexer.images.sources import SourceItem, plane_path
from indexer.model.preprocess import prepare_plane


@dataclass(frozen=True)
class Rejected:
    """An image that could not be indexed, with the stage that failed and a one-line reason."""

    path: str
    stage: str
    reason: str


@dataclass
class Prepared:
    """One prepared image: its record, and its pixels (CPU path) or raw values (device path)."""

    record: ImageRecord
    pixels: torch.Tensor | None = None  # resized [0, 1] plane (1, h, w), CPU path: standardised per batch
    raw: np.ndarray | None = None  # decoded values, device path
    skipped: bool = False
    rejected: Rejected | None = None
    seconds: float = 0.0


def image_record(item: SourceItem, image_id: int, plane: Plane | None = None) -> ImageRecord:
    """The record of an item, or of one plane of a multi-plane item (path ``file#index``; the plane's
    z and channel, where the file's axes give them, over the name's or the table's)."""
    m = item.meta
    path, z, channel = item.path, m.z, m.channel
    if plane is not None:
        path = plane_path(item.path, plane.index)
        z = plane.z if plane.z is not None else z
        channel = plane.channel if plane.channel is not None else channel
    return ImageRecord(
        id=image_id,
        path=path,
        plate=m.plate,
        well=m.well,
        row=m.row,
        column=m.column,
        site=m.site,
        channel=channel,
        z=z,
        tags=m.tags,
    )


def prepare_planes(
    item: SourceItem,
    preprocess_config: PreprocessConfig,
    existing: frozenset[int] | set[int],
    on_device: bool,
) -> Iterator[Prepared]:
    """Read, hash, decode and (on the CPU path) preprocess one item, yielding one result per plane as it is
    made: a stack of a thousand planes is never held prepared at once (the caller bounds how many planes
    are in flight, :mod:`indexer.ingest.stream`).

    A single-plane file's id is its content id (:func:`~indexer.images.decode.content_id`); plane ``i`` of a
    stack gets :func:`~indexer.images.decode.plane_id`. Ids in ``existing`` come back as skipped. A file
    that cannot be used comes back as one rejected result; a stack whose plane ``i`` cannot be decoded
    yields its planes before ``i`` and then a rejected result saying how many were indexed.
    """
    t0 = time.perf_counter()
    stage, given = "read", 0
    held: tuple[Plane, np.ndarray | torch.Tensor, float] | None = None
    try:
        data = item.read()
        file_id = content_id(data)
        if file_id in existing:
            yield Prepared(image_record(item, file_id), skipped=True, seconds=time.perf_counter() - t0)
            return
        stage = "decode"
        source = image_source(data)  # a synthetic TIFF says so in its ImageDescription
        # One plane is held back until the next arrives: only then is a file known to be a stack, whose
        # planes take plane ids (a file of one plane keeps its content id).
        for plane in iter_planes(data):
            stage = "preprocess"
            pixels = plane.image if on_device else prepare_plane(plane.image, preprocess_config)
            plane = replace(plane, image=np.empty((0, 0), np.uint8))
            if held is not None:
                yield _plane_result(item, file_id, source, *held, existing, on_device, stack=True)
                given += 1
            now = time.perf_counter()
            held, t0 = (plane, pixels, now - t0), now
            stage = "decode"
        if held is not None:
            yield _plane_result(item, file_id, source, *held, existing, on_device, stack=given > 0)
            held = None
        return
    except DecodeError as e:
        reason = str(e)
    except OSError as e:
        reason = f"cannot read file: {e.strerror or e}"
    except Exception as e:  # one bad image must never stop a build of thousands
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    if held is not None:  # a later plane failed: the file is a stack, and its good planes are used
        yield _plane_result(item, file_id, source, *held, existing, on_device, stack=True)
        given += 1
    if given:
        # Those planes are on their way to the stores already; a re-run skips them and stops here again.
        planes = f"{given} plane{'s' if given > 1 else ''}"
        reason = f"{reason} (the {planes} before it {'are' if given > 1 else 'is'} indexed)"
    rec = ImageRecord(id=-1, path=item.path)
    yield Prepared(rec, rejected=Rejected(item.path, stage, reason), seconds=time.perf_counter() - t0)


def _plane_result(
    item: SourceItem,
    file_id: int,
    source: str | None,
    plane: Plane,
    pixels: np.ndarray | torch.Tensor,
    seconds: float,
    existing: frozenset[int] | set[int],
    on_device: bool,
    stack: bool,
) -> Prepared:
    record = (
        image_record(item, plane_id(file_id, plane.index), plane) if stack else image_record(item, file_id)
    )
    record = replace(record, source=source)
    if record.id in existing:
        return Prepared(record, skipped=True, seconds=seconds)
    if on_device:
        return Prepared(record, raw=pixels, seconds=seconds)
    return Prepared(record, pixels=pixels, seconds=seconds)


def prepare_item(
    item: SourceItem,
    preprocess_config: PreprocessConfig,
    existing: frozenset[int] | set[int],
    on_device: bool,
) -> list[Prepared]:
    """Every result of :func:`prepare_planes` for one item, as a list (a caller that holds a whole file)."""
    return list(prepare_planes(item, preprocess_config, existing, on_device))
