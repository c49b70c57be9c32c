"""Retrieval by well phenotype on held-out synthetic wells: a trained MAE against the same architecture at
random initialisation and against trivial statistics, side by side, per phenotype family, over seeds.

Every held-out image queries all the others of its data set; relevant = same ground-truth phenotype class
(from the generator's CSV). mAP is copairs-style (query left out, cosine ranks) with a 95 % interval
that resamples wells (the two sites of a well share its phenotype draw). Baselines: the mean and std of
the raw counts (z-scored over the data set), a 64-bin histogram of the model's own input (after the
intensity window), 32x32 downsampled pixels, the model at random init. The trained model is also run
on two other views of the 696x520 field: the centre square resized (the view pretraining's held-out
loss uses, no aspect squash) and native-resolution 224x224 tiles (3x2, centred) embedded and averaged.
Also reported: how often the nearest other image is the other site of the same well.

Data sets are grouped by family (from their class names: ``nuclear-*``, ``actin-*``, ``clustering-*``,
else ``classic``); a last table gives each family's mAP over all its seeds with an interval that
resamples (seed, well) clusters.

    for s in 0 1 2; do mae-index synth runs/heldout-s$s --wells I01:P12 --sites 1,2 --channels 2 --z 16 --seed $s; done
    for s in 0 1 2; do
      mae-index synth runs/fam-nuclear-s$s --wells I01:P03 --channels 1 --seed $s --family nuclear
      mae-index synth runs/fam-actin-s$s --wells I01:P03 --channels 2 --seed $s --family actin
      mae-index synth runs/fam-clustering-s$s --wells I01:P03 --channels 2 --seed $s --family clustering
    done
    mae-index init-model --out runs/mae-tiny-random --size tiny --seed 0
    python bench/bench_phenotype.py runs/fam-*-s? --model examples/models/mae-tiny-bbbc006 --random runs/mae-tiny-random
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

from eval.intervals import cluster_bootstrap
from eval.phenotype import average_precisions, chance_map, map_interval, precision_at_k
from indexer.core.config import ModelConfig, PreprocessConfig, SourceConfig
from indexer.images.decode import decode_tiff
from indexer.images.sources import iter_sources
from indexer.model.encoder import ViTMAEEncoder, resolve_preprocess
from indexer.model.preprocess import normalise_intensity, preprocess_image, to_model_input
from indexer.vectors.normalize import check_kind, fit_transform


def print_table(title: str, rows: list[tuple], headers: tuple) -> None:
    """Print an aligned plain-text table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def embed(model: str, images: list[np.ndarray], view: str = "squash") -> np.ndarray:
    """Embed each image: ``squash`` (the indexer's default, whole field resized to the model's square),
    ``centre`` (centre square of the short side, resized: pretraining's held-out view) or ``tiles``
    (native-resolution tiles of the model's size, 3x2 centred on a 696x520 field, embeddings averaged)."""
    enc = ViTMAEEncoder(ModelConfig(name=model, device="cpu"))
    pre = resolve_preprocess(enc, PreprocessConfig())
    size = pre.image_size[0]
    inputs, counts = [], []
    for im in images:
        if view == "squash":
            x = preprocess_image(im, pre)[None]
        else:
            unit = normalise_intensity(torch.from_numpy(im.astype(np.int32))[None], pre.intensity)
            h, w = unit.shape[-2:]
            if view == "centre":
                side = min(h, w)
                y0, x0 = (h - side) // 2, (w - side) // 2
                crops = unit[:, y0 : y0 + side, x0 : x0 + side]
            else:
                ny, nx = max(1, h // size), max(1, w // size)
                y0, x0 = (h - ny * size) // 2, (w - nx * size) // 2
                crops = torch.cat([unit[:, y0 + i * size : y0 + (i + 1) * size, x0 + j * size : x0 + (j + 1) * size]
                                   for i in range(ny) for j in range(nx)])  # fmt: skip
            x = to_model_input(crops, pre)  # resizes the centre square; tiles are already the model's size
        inputs.append(x)
        counts.append(len(x))
    batch = torch.cat(inputs)
    vecs = np.concatenate([enc.embed(batch[i : i + 32]) for i in range(0, len(batch), 32)])
    return np.stack([part.mean(axis=0) for part in np.split(vecs, np.cumsum(counts)[:-1])])


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


def family_of(labels: np.ndarray) -> str:
    """The phenotype family of a data set, from its class names (``nuclear-small`` -> ``nuclear``)."""
    prefixes = {str(c).split("-")[0] for c in labels if "-" in str(c)}
    return prefixes.pop() if len(prefixes) == 1 else "classic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, nargs="+", help="Held-out folders (one per seed, any families).")
    ap.add_argument("--model", required=True, help="Trained ViT-MAE folder.")
    ap.add_argument(
        "--random", required=True, help="Same architecture, random weights (mae-index init-model)."
    )
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--no-views", action="store_true", help="Skip the centre-crop and tiles rows.")
    ap.add_argument("--normalize", default="none",
                    help="Comma list of mae-index build --normalize kinds for the MAE rows, each fitted on the "
                         "data set's own vectors as a build fits on its index (e.g. none,center,whiten).")  # fmt: skip
    args = ap.parse_args()
    kinds = [check_kind(k.strip()) for k in args.normalize.split(",")]
    extra = [k for k in kinds if k != "none"]
    trained = Path(args.model).name
    names = ["mean, std of raw counts", "histogram of the model input (64 bins)", "pixels 32x32 (windowed)",
             "MAE random init (same architecture)", f"MAE trained ({trained})"]  # fmt: skip
    if not args.no_views:
        names += [f"MAE trained, centre square ({trained})", f"MAE trained, native 224 tiles avg ({trained})"]
    names += [f"{n}, --normalize {k}" for n in names[3:5] for k in extra]
    # family -> name -> per data set (mAP, lo, hi, precision@k, nearest = same well)
    results: dict[str, dict[str, list[tuple[float, float, float, float, float]]]] = {}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}  # family -> name -> per data set APs
    groups: dict[str, list[np.ndarray]] = {}  # family -> per data set (seed, well) cluster ids
    chances: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    folders: dict[str, list[str]] = {}
    for data in args.data:
        images, labels, wells = load(data)
        fam = family_of(labels)
        sizes[fam] = len(labels)
        folders.setdefault(fam, []).append(data.name)
        chances.setdefault(fam, []).append(chance_map(labels))
        groups.setdefault(fam, []).append(np.array([f"{data.name}/{w}" for w in wells]))
        vectors = [first_order(images), input_histogram(images), raw_pixels(images, 32),
                   embed(args.random, images), embed(args.model, images)]  # fmt: skip
        if not args.no_views:
            vectors += [embed(args.model, images, "centre"), embed(args.model, images, "tiles")]
        vectors += [fit_transform(raw, k).apply(raw) for raw in vectors[3:5] for k in extra]
        for name, vec in zip(names, vectors):
            v = vec / np.linalg.norm(vec, axis=1, keepdims=True).clip(1e-12)
            sims = v @ v.T
            np.fill_diagonal(sims, -np.inf)
            same_well = float((wells[sims.argmax(1)] == wells).mean())
            m, lo, hi = map_interval(vec, labels, wells)
            results.setdefault(fam, {}).setdefault(name, []).append(
                (m, lo, hi, precision_at_k(vec, labels, args.k), same_well)
            )
            pooled.setdefault(fam, {}).setdefault(name, []).append(average_precisions(vec, labels))
        print(f"done {data} ({fam}, {len(labels)} images)", file=sys.stderr, flush=True)
    summary = []
    for fam, per_name in results.items():
        rows = []
        for name in names:
            res = per_name[name]
            per_seed = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi, _, _ in res]
            rows.append((name, *per_seed, f"{np.mean([r[0] for r in res]):.3f}",
                         f"{np.mean([r[3] for r in res]):.3f}", f"{np.mean([r[4] for r in res]):.3f}"))  # fmt: skip
            est = cluster_bootstrap(
                np.concatenate(pooled[fam][name]), np.concatenate(groups[fam]), (0.0, 1.0)
            )
            summary.append(
                (fam, name, f"{est.mean:.3f} [{est.low:.3f}, {est.high:.3f}]", f"{np.mean(chances[fam]):.3f}")
            )
        print_table(f"Family {fam}: phenotype retrieval on {len(res)} data sets ({sizes[fam]} images each); "
                    f"chance mAP {np.mean(chances[fam]):.3f}; [95 % interval resampling wells]",
                    rows, ("embedding", *[f"mAP {d}" for d in folders[fam]], "mean mAP",
                           f"precision@{args.k}", "nearest = same well"))  # fmt: skip
    print_table("mAP per family over all its seeds [95 % interval resampling (seed, well)]", summary,
                ("family", "embedding", "mAP", "chance"))  # fmt: skip


if __name__ == "__main__":
    main()
