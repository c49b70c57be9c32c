"""Your own images: 8- and 16-bit unsigned and float pixels, multi-page and OME-TIFF stacks with each
plane indexed as its z or channel (issue 15, item 6)."""

import io
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.core.errors import DecodeError
from indexer.images.decode import decode_planes, decode_tiff
from indexer.images.sources import load_image
from indexer.stores.faiss.store import FaissStore
from retriever.cli import main as search_main
from tests.conftest import write_tiff


def _tiff(image, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, photometric="minisblack", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def counts(real_images):
    return decode_tiff(real_images[0].read_bytes())  # real 12-bit counts, uint16


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.float16])
def test_accepted_pixel_types(dtype):
    image = (np.arange(64 * 64).reshape(64, 64) % 200).astype(dtype)
    out = decode_tiff(_tiff(image))
    assert out.dtype == (np.float32 if np.dtype(dtype).kind == "f" else dtype)
    np.testing.assert_array_equal(out, image.astype(out.dtype))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint32])
def test_refused_pixel_types_name_what_is_accepted(dtype):
    with pytest.raises(DecodeError, match="unsigned 8- or 16-bit integers, or floating point"):
        decode_tiff(_tiff(np.zeros((64, 64), dtype)))


def test_nan_pixels_are_refused():
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.nan
    with pytest.raises(DecodeError, match="NaN"):
        decode_tiff(_tiff(image))


def test_stacks_split_into_planes_with_their_z_or_channel():
    zs = np.stack([np.full((64, 64), 10 * i, np.uint16) for i in range(3)])
    planes = decode_planes(_tiff(zs, metadata={"axes": "ZYX"}))
    assert [(p.index, p.z, p.channel) for p in planes] == [(0, 0, None), (1, 1, None), (2, 2, None)]
    assert [int(p.image[0, 0]) for p in planes] == [0, 10, 20]
    ome = np.arange(2 * 3 * 64 * 64, dtype=np.uint16).reshape(2, 3, 64, 64)
    planes = decode_planes(_tiff(ome, ome=True, metadata={"axes": "CZYX"}))
    assert [(p.channel, p.z) for p in planes] == [(f"c{c}", z) for c in range(2) for z in range(3)]
    np.testing.assert_array_equal(planes[4].image, ome[1, 1])
    # Plain multi-page: pages count as z.
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        for i in range(2):
            w.write(np.full((64, 64), i, np.uint8), photometric="minisblack")
    assert [(p.z, p.channel) for p in decode_planes(buf.getvalue())] == [(0, None), (1, None)]
    with pytest.raises(DecodeError, match="only Z .* and C"):
        decode_planes(_tiff(np.zeros((2, 64, 64), np.uint16), metadata={"axes": "TYX"}))
    with pytest.raises(DecodeError, match="a stack of 3 planes"):
        decode_tiff(_tiff(zs, metadata={"axes": "ZYX"}))


def test_build_and_query_own_formats(tmp_path, tiny_model_dir, counts):
    d = tmp_path / "mine"
    write_tiff(d / "sixteen.tif", counts)
    write_tiff(d / "eight.tif", (counts // 16).astype(np.uint8))  # 12-bit counts as 8-bit
    write_tiff(d / "float.tif", counts.astype(np.float32) / 4095.0)  # a [0, 1] float image
    stack = np.stack([counts, np.roll(counts, 50, axis=1), counts[::-1]])
    tifffile.imwrite(
        d / "stack.ome.tif", stack[None], ome=True, metadata={"axes": "CZYX"}, photometric="minisblack"
    )
    r = CliRunner().invoke(index_main, ["build", str(d), "--index", str(tmp_path / "idx"), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress", "--format", "json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["indexed"] == 6 and s["rejected"] == 0
    store = FaissStore(tmp_path / "idx", read_only=True)
    by_path = {rec.path: rec for rec in store.get(store.ids())}
    planes = [f"{d / 'stack.ome.tif'}#{i}" for i in range(3)]
    # tifffile drops the length-1 C axis: the planes number z only.
    assert [(by_path[p].z, by_path[p].channel) for p in planes] == [(0, None), (1, None), (2, None)]
    vec = {p: store.get_vectors([rec.id])[0] for p, rec in by_path.items()}
    # The per-image percentile window is scale-free: the same picture in 8-bit, 16-bit, float or as a
    # plane of a stack gives (nearly) the same vector.
    sixteen = vec[str(d / "sixteen.tif")]
    assert float(sixteen @ vec[planes[0]]) == pytest.approx(1.0, abs=1e-5)
    assert float(sixteen @ vec[str(d / "float.tif")]) == pytest.approx(1.0, abs=1e-4)
    assert float(sixteen @ vec[str(d / "eight.tif")]) > 0.999
    # A plane is re-read from its recorded path (eval does this), and filters by its z.
    np.testing.assert_array_equal(load_image(planes[2]), counts[::-1])
    q = CliRunner().invoke(search_main, ["query", str(d / "sixteen.tif"), "--index", str(tmp_path / "idx"),
                                         "--z", "2", "--device", "cpu", "--format", "json"])  # fmt: skip
    assert q.exit_code == 0, q.output
    assert [row["path"] for row in json.loads(q.stdout)] == [planes[2]]
    # A re-run skips every plane.
    r = CliRunner().invoke(index_main, ["build", str(d), "--index", str(tmp_path / "idx"), "--device", "cpu",
                                        "--no-progress", "--format", "json"])  # fmt: skip
    assert json.loads(r.stdout)["skipped_existing"] == 6
