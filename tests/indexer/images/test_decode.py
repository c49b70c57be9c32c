import io

import numpy as np
import pytest
import tifffile

from indexer.core.errors import DecodeError
from indexer.images.decode import _libtiff_pixels, content_id, decode_tiff


def _tiff_bytes(tmp_path, image, **kw):
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, image, **kw)
    return p.read_bytes()


def _two_pages(tmp_path):
    p = tmp_path / "stack.tif"
    with tifffile.TiffWriter(p) as w:
        w.write(np.zeros((64, 64), np.uint16))
        w.write(np.ones((64, 64), np.uint16))
    return p.read_bytes()


def test_real_image_decodes_as_bbbc006(real_images):
    data = real_images[0].read_bytes()
    image = decode_tiff(data)
    assert image.shape == (520, 696) and image.dtype == np.uint16
    assert image.max() <= 4095
    assert content_id(data) == content_id(bytes(data))
    assert 0 <= content_id(data) < 2**63


def test_content_id_differs_for_different_files(real_images):
    ids = {content_id(p.read_bytes()) for p in real_images}
    assert len(ids) == len(real_images)


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda t, b: b[: len(b) // 3], "not a readable TIFF"),
        (lambda t, b: b"this is not a tiff at all", "not a readable TIFF"),
        (lambda t, b: b"", "empty file"),
        (lambda t, b: _tiff_bytes(t, np.zeros((64, 64, 3), np.uint8), photometric="rgb"), "single-channel"),
        # 8-bit and float images are accepted now (test_formats.py); signed integers are not.
        (lambda t, b: _tiff_bytes(t, np.zeros((64, 64), np.int16)), "pixel type int16"),
        (lambda t, b: _tiff_bytes(t, np.zeros((64, 64), np.uint32)), "pixel type uint32"),
        # A stack is indexed plane by plane; a single-image decode (a query) refuses it.
        (lambda t, b: _two_pages(t), "a stack of 2 planes"),
        (lambda t, b: _tiff_bytes(t, np.zeros((8, 64), np.uint16)), "too small"),
    ],
)
def test_bad_inputs_raise_one_line_reasons(tmp_path, real_images, make, reason):
    data = make(tmp_path, real_images[0].read_bytes())
    with pytest.raises(DecodeError, match=reason) as e:
        decode_tiff(data)
    assert "\n" not in str(e.value)


def test_libtiff_and_tifffile_decode_the_same_pixels(real_images):
    for path in real_images[:5]:
        data = path.read_bytes()
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            reference = tif.pages[0].asarray()
        fast = _libtiff_pixels(data, reference.shape, reference.dtype)
        assert fast is not None and np.array_equal(fast, reference)
        assert np.array_equal(decode_tiff(data), reference)


def test_files_libtiff_refuses_fall_back_to_tifffile(real_images):
    data = real_images[0].read_bytes()
    reference = tifffile.imread(io.BytesIO(data))
    # a few missing trailing bytes: libtiff refuses the file, tifffile still reads every strip
    short = data[:-100]
    assert _libtiff_pixels(short, reference.shape, reference.dtype) is None
    assert decode_tiff(short).shape == reference.shape
    # a disagreement on shape also falls back
    assert _libtiff_pixels(data, (1, 1), reference.dtype) is None


def test_pixel_bomb_is_refused_from_its_header():
    import time

    from tests.conftest import zero_bomb

    bomb = zero_bomb(16384)  # 512 MB of zeros in ~430 KB
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="M pixels; the limit is 64 M pixels"):
        decode_tiff(bomb)
    assert time.perf_counter() - t0 < 0.5


def test_compression_bomb_within_the_pixel_cap_is_refused():
    from tests.conftest import zero_bomb

    with pytest.raises(DecodeError, match="compression ratio .* over the limit of 256:1"):
        decode_tiff(zero_bomb(8192))  # 64 MP: under the pixel cap, 128 MB from ~110 KB


def test_limits_are_configurable_and_small_flat_images_pass():
    from indexer.core.limits import DecodeLimits
    from tests.conftest import zero_bomb

    assert decode_tiff(zero_bomb(64)).shape == (64, 64)  # ratio ~1000:1 but 8 KB: exempt
    with pytest.raises(DecodeError, match="the limit is 1 M pixels"):
        decode_tiff(zero_bomb(2048), DecodeLimits(max_pixels=1024 * 1024 - 1))
    assert decode_tiff(zero_bomb(8192), DecodeLimits(max_ratio=2000)).shape == (8192, 8192)


def test_a_stack_bomb_is_refused_from_its_header():
    import imagecodecs

    from indexer.images.decode import decode_planes

    strip = imagecodecs.lzw_encode(np.zeros((512, 4096), np.uint16).tobytes())
    buf = io.BytesIO()
    tifffile.imwrite(buf, data=iter([strip] * 16), shape=(2, 4096, 4096), dtype=np.uint16, rowsperstrip=512,
                     compression="lzw", photometric="minisblack")  # fmt: skip
    assert len(buf.getvalue()) < 200_000  # 64 MB of pixels in two planes
    with pytest.raises(DecodeError, match="compression ratio"):
        decode_planes(buf.getvalue())


@pytest.mark.parametrize("read", ["decode_planes", "image_source"])
def test_reading_a_file_lets_go_of_its_bytes_without_the_cycle_collector(real_images, read):
    """tifffile's TiffFile and its pages refer to each other, so they wait for Python's full cycle
    collection; the BytesIO among them must not keep the file's bytes (0.6 MB a BBBC006 image) alive
    that long. A 52k build accumulated ~200 of them (130 MB) between two full collections."""
    import gc
    import sys

    from indexer.images import decode

    data = real_images[0].read_bytes()
    before = sys.getrefcount(data)
    gc.disable()
    try:
        for _ in range(3):
            getattr(decode, read)(data)
        assert sys.getrefcount(data) == before
    finally:
        gc.enable()
