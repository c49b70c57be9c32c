"""Retrieval by well phenotype on held-out synthetic wells: a trained MAE against the same architecture at
random initialisation and against trivial statistics, side by side, on one or more data sets (seeds).

Every held-out image queries all the others; relevant = same ground-truth phenotype class (from the
generator's CSV). mAP is copairs-style (query left out, cosine ranks) with a 95 % interval that
resamples wells (the two sites of a well share its phenotype draw). Baselines: the mean and std of the
raw counts (z-scored over the data set), a 64-bin histogram of the model's own input (after the
intensity window), 32x32 downsampled pixels, the model at random init. Also reported: how often the
nearest other image is the other site of the same well.

    for s in 0 1 2; do mae-index synth runs/heldout-s$s --wells I01:P12 --sites 1,2 --channels 2 --z 16 --seed $s; done
    mae-index init-model --out runs/mae-tiny-random --size tiny --seed 0
    python bench/bench_phenotype.py runs/heldout-s0 runs/heldout-s1 runs/heldout-s2 \
        --model examples/models/mae-tiny-bbbc006 --random runs/mae-tiny-random --normalize none,center,whiten
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
from eval.phenotype import chance_map, map_interval, precision_at_k  # noqa: E402
from indexer.config import ModelConfig, PreprocessConfig, SourceConfig  # noqa: E402
from indexer.decode import decode_tiff  # noqa: E402
from indexer.encoder import ViTMAEEncoder, resolve_preprocess  # noqa: E402
from indexer.normalize import check_kind, fit_transform  # noqa: E402
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


def first_order(images: list[np.ndarray]) -> np.ndarray:
    """Mean and std of the raw counts, z-scored over the data set (so cosine compares both)."""
    x = np.stack([[im.mean(), im.std()] for im in images]).astype(float)
    return (x - x.mean(0)) / x.std(0).clip(1e-12)


def input_histogram(images: list[np.ndarray]) -> np.ndarray:
    """64-bin histogram of the model's own input: counts after the indexing intensity window."""
    out = []
    for im in images:
        unit = normalise_intensity(torch.from_numpy(im.astype(np.int32))[None], PreprocessConfig().intensity)
        out.append(np.histogram(unit.numpy(), bins=64, range=(0.0, 1.0))[0].astype(float))
    return np.stack(out)


def load(data: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    truth = pd.read_csv(next(data.glob("*ground_truth.csv")))
    truth["key"] = truth["well"].str.upper() + "_" + truth["site"].astype(str)
    label_of = dict(zip(truth["key"], truth["phenotype_class"]))
    items = [it for it in iter_sources(SourceConfig(paths=(data,))) if it.meta.well]
    labels = np.array([label_of[f"{it.meta.well}_{it.meta.site}"] for it in items])
    wells = np.array([it.meta.well for it in items])
    return [decode_tiff(it.read()) for it in items], labels, wells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, nargs="+", help="One held-out folder per seed.")
    ap.add_argument("--model", required=True, help="Trained ViT-MAE folder.")
    ap.add_argument(
        "--random", required=True, help="Same architecture, random weights (mae-index init-model)."
    )
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--normalize", default="none",
                    help="Comma list of mae-index build --normalize kinds for the MAE rows, each fitted on the "
                         "data set's own vectors as a build fits on its index (e.g. none,center,whiten).")  # fmt: skip
    args = ap.parse_args()
    kinds = [check_kind(k.strip()) for k in args.normalize.split(",")]
    mae = ["MAE random init (same architecture)", f"MAE trained ({Path(args.model).name})"]
    names = ["mean, std of raw counts", "histogram of the model input (64 bins)", "pixels 32x32 (windowed)"]
    names += [n if k == "none" else f"{n}, --normalize {k}" for n in mae for k in kinds]
    results: dict[str, list[tuple[float, float, float, float, float]]] = {n: [] for n in names}
    chances = []
    for data in args.data:
        images, labels, wells = load(data)
        chances.append(chance_map(labels))
        raw = [embed(args.random, images), embed(args.model, images)]
        vectors = [first_order(images), input_histogram(images), raw_pixels(images, 32)]
        for r in raw:
            for k in kinds:
                t = fit_transform(r, k)
                vectors.append(r if t is None else t.apply(r))
        embeddings = dict(zip(names, vectors))
        for name, vec in embeddings.items():
            v = vec / np.linalg.norm(vec, axis=1, keepdims=True).clip(1e-12)
            sims = v @ v.T
            np.fill_diagonal(sims, -np.inf)
            same_well = float((wells[sims.argmax(1)] == wells).mean())
            m, lo, hi = map_interval(vec, labels, wells)
            results[name].append((m, lo, hi, precision_at_k(vec, labels, args.k), same_well))
    rows = []
    for name in names:
        per_seed = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi, _, _ in results[name]]
        mean = np.mean([r[0] for r in results[name]])
        rows.append((name, *per_seed, f"{mean:.3f}", f"{np.mean([r[3] for r in results[name]]):.3f}",
                     f"{np.mean([r[4] for r in results[name]]):.3f}"))  # fmt: skip
    seeds = [f"mAP {d.name}" for d in args.data]
    print_table(f"Phenotype retrieval on {len(args.data)} held-out data sets ({len(labels)} images each); "
                f"chance mAP {np.mean(chances):.3f}; [95 % interval resampling wells]",
                rows, ("embedding", *seeds, "mean mAP", f"precision@{args.k}", "nearest = same well"))  # fmt: skip


if __name__ == "__main__":
    main()
