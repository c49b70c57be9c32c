"""Retrieval by well phenotype on held-out synthetic wells: a trained MAE vs the same architecture at
random initialisation vs raw-pixel baselines, measured in one run.

Every held-out image queries all the others; relevant = same ground-truth phenotype class (from the
generator's CSV). Also reported: how often the nearest other image is the other site of the same well.

    mae-index synth runs/heldout --wells I01:P12 --sites 1,2 --channels 2 --z 16 --seed 0
    python bench/bench_phenotype.py runs/heldout --model runs/mae-tiny-bbbc006 --random runs/mae-tiny-random
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from eval.phenotype import mean_average_precision, precision_at_k  # noqa: E402
from indexer.config import ModelConfig, PreprocessConfig, SourceConfig  # noqa: E402
from indexer.decode import decode_tiff  # noqa: E402
from indexer.encoder import ViTMAEEncoder, resolve_preprocess  # noqa: E402
from indexer.preprocess import normalise_intensity, preprocess_image  # noqa: E402
from indexer.sources import iter_sources  # noqa: E402


def embed(model: str, images: list[np.ndarray]) -> np.ndarray:
    enc = ViTMAEEncoder(ModelConfig(name=model, device="cpu"))
    pre = resolve_preprocess(enc, PreprocessConfig())
    return np.concatenate([enc.embed(torch.stack([preprocess_image(im, pre) for im in images[i : i + 16]]))
                           for i in range(0, len(images), 16)])  # fmt: skip


def raw_pixels(images: list[np.ndarray], size: int) -> np.ndarray:
    out = []
    for im in images:
        unit = normalise_intensity(torch.from_numpy(im.astype(np.int32))[None], PreprocessConfig().intensity)
        small = torch.nn.functional.interpolate(unit[None], size=(size, size), mode="area")[0, 0]
        out.append((small - small.mean()).flatten().numpy())
    return np.stack(out)


def intensity_histogram(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.histogram(im, bins=64, range=(0, 4096))[0].astype(float) for im in images])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", required=True, help="Trained ViT-MAE folder.")
    ap.add_argument(
        "--random", required=True, help="Same architecture, random weights (mae-index init-model)."
    )
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    truth = pd.read_csv(next(args.data.glob("*ground_truth.csv")))
    truth["key"] = truth["well"].str.upper() + "_" + truth["site"].astype(str)
    label_of = dict(zip(truth["key"], truth["phenotype_class"]))
    items = [it for it in iter_sources(SourceConfig(paths=(args.data,))) if it.meta.well]
    keys = [f"{it.meta.well}_{it.meta.site}" for it in items]
    labels = np.array([label_of[k] for k in keys])
    wells = np.array([it.meta.well for it in items])
    images = [decode_tiff(it.read()) for it in items]

    embeddings = {
        f"MAE trained ({Path(args.model).name})": embed(args.model, images),
        "MAE random init (same architecture)": embed(args.random, images),
        "raw pixels 32x32 (percentile-normalised)": raw_pixels(images, 32),
        "intensity histogram (64 bins)": intensity_histogram(images),
    }
    rows = []
    for name, vec in embeddings.items():
        v = vec / np.linalg.norm(vec, axis=1, keepdims=True).clip(1e-12)
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        same_well = float((wells[sims.argmax(1)] == wells).mean())
        rows.append((name, f"{mean_average_precision(vec, labels):.3f}", f"{precision_at_k(vec, labels, args.k):.3f}",
                     f"{same_well:.3f}"))  # fmt: skip
    counts = ", ".join(f"{c} {n}" for c, n in zip(*np.unique(labels, return_counts=True)))
    chance = float(np.mean([(labels == c).sum() - 1 for c in labels]) / (len(labels) - 1))
    print_table(f"Phenotype retrieval on {len(items)} held-out images ({counts}); chance precision {chance:.3f}",
                rows, ("embedding", "mAP (class)", f"precision@{args.k}", "nearest = same well"))  # fmt: skip


if __name__ == "__main__":
    main()
