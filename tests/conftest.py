"""Shared fixtures: a real tiny ViT-MAE saved and loaded through ``from_pretrained``, real TIFFs, and
(via tests.fixtures_redis) a real Redis Stack server started once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest_plugins = ["tests.fixtures_redis"]

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO / "examples" / "bbbc006" / "BBBC006_v1_images_z_16"
if not REAL_DIR.is_dir():  # a checkout without examples/ still has the shared copy beside it
    REAL_DIR = REPO.parent / "shared" / "bbbc006" / "BBBC006_v1_images_z_16"
SYNTH_DIR = REPO / "examples" / "synthetic"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight ViT-MAE of the ``test`` preset (64 px input), saved as safetensors."""
    from indexer.model.presets import create_model

    return create_model(tmp_path_factory.mktemp("models") / "mae-test", "test", seed=0)


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """The 20 real BBBC006 w2 z16 images shipped in examples/."""
    files = sorted(REAL_DIR.glob("*.tif"))
    assert len(files) == 20, f"expected 20 real images in {REAL_DIR}"
    return files


@pytest.fixture
def real_subset(tmp_path, real_images) -> Path:
    """A BBBC006-named folder (z16) holding 6 of the real images."""
    d = tmp_path / "data" / "BBBC006_v1_images_z_16"
    d.mkdir(parents=True)
    for p in real_images[:6]:
        shutil.copy(p, d / p.name)
    return tmp_path / "data"


def write_tiff(path: Path, image: np.ndarray, **kwargs) -> Path:
    """Write ``image`` as a BBBC006-like TIFF (LZW, 11 rows per strip) unless kwargs say otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"compression": "lzw", "rowsperstrip": 11, "photometric": "minisblack", **kwargs}
    tifffile.imwrite(path, image, **opts)
    return path


def zero_bomb(height: int, width: int | None = None, rows_per_strip: int = 512) -> bytes:
    """A decompression bomb: an LZW TIFF of zeros, ``height x width`` uint16, a few hundred KB.

    One strip is encoded once and repeated, so a 16384 x 16384 bomb (512 MB decoded, ~430 KB on disk)
    takes ~0.1 s to build.
    """
    import io

    import imagecodecs

    width = width or height
    rows_per_strip = min(rows_per_strip, height)
    strip = imagecodecs.lzw_encode(np.zeros((rows_per_strip, width), np.uint16).tobytes())
    n = -(-height // rows_per_strip)
    last_rows = height - (n - 1) * rows_per_strip
    last = imagecodecs.lzw_encode(np.zeros((last_rows, width), np.uint16).tobytes())
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        data=iter([strip] * (n - 1) + [last]),
        shape=(height, width),
        dtype=np.uint16,
        rowsperstrip=rows_per_strip,
        compression="lzw",
        photometric="minisblack",
    )
    return buf.getvalue()
