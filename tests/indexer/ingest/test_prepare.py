"""One item's preparation, shared by both engines: a good file gives a record with pixels, a bad one a
rejected row with its stage and reason; the Ray task opens each zip once and keeps the driver's
metadata."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from indexer.core.config import PreprocessConfig
from indexer.core.records import RECORD_FIELDS, ImageMeta
from indexer.images.sources import SourceItem
from indexer.ingest import ray_stages
from indexer.ingest.prepare import prepare_item

PRE = PreprocessConfig(image_size=(64, 64))


def test_prepare_item_gives_pixels_or_a_rejected_row(real_images, tmp_path):
    good = real_images[0]
    [ok] = prepare_item(
        SourceItem(str(good), good.read_bytes, ImageMeta(well="A14")), PRE, frozenset(), False
    )
    assert ok.rejected is None and not ok.skipped
    # One resized plane: the three model channels and their mean/std are made per batch.
    assert tuple(ok.pixels.shape) == (1, 64, 64) and ok.record.well == "A14"

    bad = tmp_path / "broken.tif"
    bad.write_bytes(good.read_bytes()[:300])
    [no] = prepare_item(SourceItem(str(bad), bad.read_bytes, ImageMeta()), PRE, frozenset(), False)
    assert no.rejected is not None and no.rejected.path == str(bad)
    assert no.rejected.stage == "decode" and no.rejected.reason

    [seen] = prepare_item(
        SourceItem(str(good), good.read_bytes, ImageMeta()), PRE, frozenset({ok.record.id}), False
    )
    assert seen.skipped and seen.pixels is None


def test_ray_prepare_task_opens_each_zip_once_and_takes_metadata_from_the_driver(
    real_images, tmp_path, monkeypatch
):
    archive = tmp_path / "BBBC006_v1_images_z_16.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in real_images[:5]:
            zf.write(p, f"BBBC006_v1_images_z_16/{p.name}")
    opened: list[str] = []
    real_zipfile = zipfile.ZipFile

    def counting(path, *a, **kw):
        opened.append(str(path))
        return real_zipfile(path, *a, **kw)

    monkeypatch.setattr(zipfile, "ZipFile", counting)
    paths = [f"{archive}/BBBC006_v1_images_z_16/{p.name}" for p in real_images[:5]]
    # The driver's metadata wins over anything a worker could parse from the name.
    metas = [
        {
            **{f: None for f in RECORD_FIELDS if f != "path"},
            "well": f"B0{i}",
            "z": 7,
            "tags": json.dumps({"k": "v"}),
        }
        for i in range(5)
    ]
    batch = {
        "order": np.arange(5),
        "path": np.array(paths, dtype=object),
        "meta": np.array(metas, dtype=object),
    }
    parts = list(ray_stages._prepare_batch(batch, PRE.to_dict(), frozenset(), rows=2))
    # Output batches of at most 2 planes: a task never holds all its files' prepared planes at once.
    assert [len(part["order"]) for part in parts] == [2, 2, 1]
    out = {k: [v for part in parts for v in part[k]] for k in parts[0]}
    assert opened == [str(archive)]
    assert out["status"] == ["ok"] * 5
    assert [m["well"] for m in out["meta"]] == [f"B0{i}" for i in range(5)]
    assert {m["z"] for m in out["meta"]} == {7}
    assert all(json.loads(m["tags"]) == {"k": "v"} for m in out["meta"])
    assert Path(out["path"][0]).name == real_images[0].name


def test_a_stack_streams_its_planes_and_a_bad_plane_keeps_the_good_ones_before_it(tmp_path):
    """A stack's planes come one at a time (a 1,000-plane stack is never held prepared at once); plane 2
    holding NaN rejects the file after planes 0 and 1, and says so. Before (c59f047): the whole stack was
    prepared first, and one bad plane rejected all of it."""
    import tifffile

    from indexer.ingest.prepare import prepare_planes

    stack = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    good, bad = tmp_path / "good.tif", tmp_path / "bad.tif"
    tifffile.imwrite(good, stack, photometric="minisblack", metadata=None)
    stack[2, 5, 5] = np.nan
    tifffile.imwrite(bad, stack, photometric="minisblack", metadata=None)

    steps = prepare_planes(SourceItem(str(good), good.read_bytes, ImageMeta()), PRE, frozenset(), False)
    first = next(steps)  # made before the later planes are decoded
    rest = list(steps)
    assert [p.record.path for p in [first, *rest]] == [f"{good}#{i}" for i in range(4)]
    assert all(p.pixels is not None and p.rejected is None for p in [first, *rest])

    out = prepare_item(SourceItem(str(bad), bad.read_bytes, ImageMeta()), PRE, frozenset(), False)
    assert [p.record.path for p in out[:2]] == [f"{bad}#0", f"{bad}#1"]
    assert all(p.pixels is not None for p in out[:2]) and len(out) == 3
    assert out[2].rejected is not None and out[2].rejected.path == str(bad)
    assert (
        "plane 2" in out[2].rejected.reason and "the 2 planes before it are indexed" in out[2].rejected.reason
    )
    # A re-run skips the planes it indexed and stops at the bad one again.
    seen = frozenset(p.record.id for p in out[:2])
    again = prepare_item(SourceItem(str(bad), bad.read_bytes, ImageMeta()), PRE, seen, False)
    assert [p.skipped for p in again[:2]] == [True, True] and again[2].rejected is not None
