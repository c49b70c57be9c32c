"""Write examples/own-data/: images named and typed the way a lab might have them, made from the shipped
synthetic BBBC006 look-alike, and the metadata table that describes them.

    python examples/own-data/make_example.py

- ``images/A01_dense_nuclei_8bit.tif``: w1 of well A01, as 8-bit (counts / 16)
- ``images/A01_dense_actin_float.tif``: w2 of well A01, as float32 in [0, 1] (counts / 4095)
- ``images/A02_control_actin_stack.ome.tif``: w2 of well A02 at z 13, 16 and 24, as one OME-TIFF z-stack
- ``images/A09_mitotic_actin.tif``, ``images/A11_sparse_actin.tif``: w2, 16-bit, renamed
- ``plate.csv``: path -> well, site, channel, and a ``phenotype`` tag from the look-alike's ground truth
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
SYNTH = HERE.parent / "synthetic"


def _one(z: int, well: str, channel: int) -> np.ndarray:
    (path,) = (SYNTH / f"BBBC006_v1_images_z_{z:02d}").glob(f"*_{well.lower()}_s1_w{channel}*.tif")
    return tifffile.imread(path)


def main() -> None:
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    opts = {"compression": "zlib", "predictor": True, "photometric": "minisblack"}
    tifffile.imwrite(out / "A01_dense_nuclei_8bit.tif", (_one(16, "A01", 1) // 16).astype(np.uint8), **opts)
    floats = (_one(16, "A01", 2) / 4095.0).astype(np.float32)
    tifffile.imwrite(out / "A01_dense_actin_float.tif", floats, **{**opts, "predictor": False})
    stack = np.stack([_one(z, "A02", 2) for z in (13, 16, 24)])
    tifffile.imwrite(
        out / "A02_control_actin_stack.ome.tif", stack, ome=True, metadata={"axes": "ZYX"}, **opts
    )
    tifffile.imwrite(out / "A09_mitotic_actin.tif", _one(16, "A09", 2), **opts)
    tifffile.imwrite(out / "A11_sparse_actin.tif", _one(16, "A11", 2), **opts)
    rows = [
        ("images/A01_dense_nuclei_8bit.tif", "A01", 1, "w1", "dense"),
        ("images/A01_dense_actin_float.tif", "A01", 1, "w2", "dense"),
        ("images/A02_control_actin_stack.ome.tif", "A02", 1, "w2", "control"),
        ("images/A09_mitotic_actin.tif", "A09", 1, "w2", "mitotic"),
        ("images/A11_sparse_actin.tif", "A11", 1, "w2", "sparse"),
    ]
    with open(HERE / "plate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "well", "site", "channel", "phenotype"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
