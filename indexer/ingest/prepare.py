"""One item of a build: read, hash, decode and (on the CPU path) preprocess it; both engines call this.

A file gives one result per plane (a stack gives several). A bad file never raises: it comes back as
one rejected result with the stage that failed and a one-line reason.
"""

from __future__ import annotations

import time
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


def prepare_item(
    item: SourceItem,
    preprocess_config: PreprocessConfig,
    existing: frozenset[int] | set[int],
    on_device: bool,
) -> list[Prepared]:
    """Read, hash, decode and (on the CPU path) preprocess one item to its resized plane: one result per plane.

    A single-plane file's id is its content id (:func:`~indexer.images.decode.content_id`); plane ``i`` of a
    stack gets :func:`~indexer.images.decode.plane_id`. Ids in ``existing`` come back as skipped.
    """
    t0 = time.perf_counter()
    stage = "read"
    try:
        data = item.read()
        file_id = content_id(data)
        if file_id in existing:
            return [Prepared(image_record(item, file_id), skipped=True, seconds=time.perf_counter() - t0)]
        stage = "decode"
        source = image_source(data)  # a synthetic TIFF says so in its ImageDescription
        # One page is decoded and prepared at a time: what a stack holds at once is its prepared planes
        # (at most DecodeLimits.max_planes of them), never all its decoded pages.
        done: list[tuple[Plane, np.ndarray | torch.Tensor]] = []
        for plane in iter_planes(data):
            stage = "preprocess"
            pixels = plane.image if on_device else prepare_plane(plane.image, preprocess_config)
            done.append((replace(plane, image=np.empty((0, 0), np.uint8)), pixels))
            stage = "decode"
        out = []
        for plane, pixels in done:
            if len(done) == 1:
                record = image_record(item, file_id)
            else:
                record = image_record(item, plane_id(file_id, plane.index), plane)
            record = replace(record, source=source)
            if record.id in existing:
                out.append(Prepared(record, skipped=True))
            elif on_device:
                out.append(Prepared(record, raw=pixels))
            else:
                out.append(Prepared(record, pixels=pixels))
        per_plane = (time.perf_counter() - t0) / len(out)
        return [replace(p, seconds=per_plane) for p in out]
    except DecodeError as e:
        reason = str(e)
    except OSError as e:
        reason = f"cannot read file: {e.strerror or e}"
    except Exception as e:  # one bad image must never stop a build of thousands
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    rec = ImageRecord(id=-1, path=item.path)
    return [Prepared(rec, rejected=Rejected(item.path, stage, reason), seconds=time.perf_counter() - t0)]
