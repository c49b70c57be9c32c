"""The figures of the robustness report (matplotlib, imported when a figure is drawn): metric curves,
the defocus curve, drift histograms, the clean-vs-perturbed heatmap, a t-SNE and example images."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from eval import perturb
from eval.robustness import NATURAL, RobustnessResult
from indexer.bbbc006.constants import SATURATION
from retriever import render

CURVE_METRICS = (("self_at_1", "self-retrieval@1"), ("overlap_at_k", "overlap@k"), ("rbo", "RBO"),
                 ("drift_normalised", "drift / median NN distance"))  # fmt: skip
#: Y-axis label of each curve.
Y_LABELS = {
    "self_at_1": "share of queries whose source ranks 1st",
    "overlap_at_k": "share of top-k shared with the clean list",
    "rbo": "rank-biased overlap (p)",
    "drift_normalised": "cosine drift / median NN distance",
}
#: The longer side, in pixels, of each image of the example figure: twice what a 1.7-inch panel shows at
#: the report's 100 dpi (a 696 x 520 BBBC006 image is drawn block-averaged to 348 x 260).
EXAMPLE_PX = 348


def png(fig) -> str:
    """The figure as base64 PNG (100 dpi), closed once drawn."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _series(pts: list[dict], key: str) -> np.ndarray:
    return np.array([e.get(key) if e.get(key) is not None else np.nan for e in pts], dtype=float)


def _plot_metric(ax, pts: list[dict], x: list[float], metric: str, label: str, color=None) -> None:
    y, lo, hi = (_series(pts, metric + s) for s in ("", "_low", "_high"))
    (line,) = ax.plot(x, y, marker="o", label=label, color=color)
    ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
    chance = _series(pts, metric + "_chance")
    if np.isfinite(chance).any():
        ax.plot(x, chance, ls="--", lw=1, color=line.get_color(), alpha=0.8)
    small = [i for i, e in enumerate(pts) if e.get("small_n")]
    if small:  # n < 5: drawn hollow, read as anecdotes
        ax.scatter(
            [x[i] for i in small], y[small], s=60, facecolors="white", edgecolors=line.get_color(), zorder=3
        )


def curves_figure(summary: list[dict], perturbations: list[str]):
    """Each metric against severity for every synthetic perturbation, with intervals and chance (None: none)."""
    import matplotlib.pyplot as plt

    names = [n for n in perturbations if n != NATURAL and any(e["perturbation"] == n for e in summary)]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.6))
    for ax, (metric, label) in zip(axes, CURVE_METRICS):
        for name in names:
            pts = [e for e in summary if e["perturbation"] == name]
            _plot_metric(ax, pts, [e["severity"] for e in pts], metric, name)
        ax.set_title(label)
        ax.set_xlabel("severity level (0 = clean)")
        ax.set_ylabel(Y_LABELS[metric])
        ax.grid(alpha=0.3)
        if metric != "drift_normalised":
            ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Mean and 95 % interval per severity; dashed: chance level of random top-k lists", fontsize=9
    )
    fig.tight_layout()
    return fig


def defocus_figure(summary: list[dict]):
    """The natural defocus curve (metric against |dz| in um), one panel per provenance (None: no z-pairs)."""
    import matplotlib.pyplot as plt

    all_pts = [e for e in summary if e["perturbation"] == NATURAL]
    if not all_pts:
        return None
    # One panel per provenance: a real stack and a synthetic one are different experiments, and each
    # curve is labelled by what it contains.
    curves = sorted({e.get("curve") or "unknown" for e in all_pts}, key=lambda c: (c != "real", c))
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 3.6), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        pts = [e for e in all_pts if (e.get("curve") or "unknown") == curve]
        um = [perturb.Z_STEP_UM * e["severity"] for e in pts]
        for metric, label in CURVE_METRICS[:3]:
            _plot_metric(ax, pts, um, metric, label)
        ax.set_xlabel(f"distance from the focal plane |dz| (um, {perturb.Z_STEP_UM:g} um per slice)")
        ax.set_ylabel("score (dashed: chance level)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Defocus, {curve} z-stacks ({max(e['n_queries'] for e in pts)} sites)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def drift_figure(rows: list[dict], perturbations: list[str]):
    """Histogram of the cosine drift of each perturbation at its highest severity."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name in perturbations:
        sub = [r for r in rows if r["perturbation"] == name]
        if not sub:
            continue
        top = max(r["severity"] for r in sub)
        vals = [r["drift_cosine"] for r in sub if r["severity"] == top]
        ax.hist(vals, bins=20, alpha=0.5, label=f"{name} (sev {top})")
    ax.set_xlabel("cosine drift, clean vs perturbed embedding")
    ax.set_ylabel("queries")
    ax.legend(fontsize=7)
    return fig


def heatmap_figure(result: RobustnessResult):
    """Clean against perturbed query similarities for one perturbation, and its ``(name, severity)``."""
    import matplotlib.pyplot as plt

    keys = sorted(result.perturbed_vectors)
    key = next((k for k in keys if k == ("gaussian_noise", 3)), keys[len(keys) // 2] if keys else None)
    if key is None:
        return None, None
    n = min(30, len(result.clean_vectors))
    sims = result.clean_vectors[:n] @ result.perturbed_vectors[key][:n].T
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(sims, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel(f"perturbed query ({key[0]}, severity {key[1]})")
    ax.set_ylabel("clean query")
    ax.set_title("cosine similarity")
    return fig, key


def tsne_figure(result: RobustnessResult, seed: int):
    """t-SNE of the clean and perturbed query embeddings of one perturbation (None: too few)."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    name = "gaussian_noise" if any(k[0] == "gaussian_noise" for k in result.perturbed_vectors) else None
    name = name or (sorted(result.perturbed_vectors)[0][0] if result.perturbed_vectors else None)
    if name is None:
        return None
    sevs = sorted(s for (n, s) in result.perturbed_vectors if n == name)
    blocks = [result.perturbed_vectors[(name, s)] for s in sevs]
    x = np.concatenate([result.clean_vectors, *blocks])
    if len(x) < 5:
        return None
    emb = TSNE(
        n_components=2, perplexity=min(30, len(x) - 1) / 2, random_state=seed, init="pca"
    ).fit_transform(x)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    n = len(result.clean_vectors)
    for i, s in enumerate(sevs):
        pts = emb[n * (i + 1) : n * (i + 2)]
        ax.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.6, label=f"{name} sev {s}")
    ax.scatter(emb[:n, 0], emb[:n, 1], s=18, c="k", marker="x", label="clean")
    ax.set_title("t-SNE of clean and perturbed query embeddings")
    ax.legend(fontsize=6, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def examples_figure(result: RobustnessResult):
    """One query under each perturbation and severity, in one fixed display window (None: no examples)."""
    import matplotlib.pyplot as plt

    names = sorted({n for n, _ in result.examples})
    if not names:
        return None
    sevs = sorted({s for _, s in result.examples})
    fig, axes = plt.subplots(
        len(names), len(sevs), figsize=(1.7 * len(sevs), 1.5 * len(names)), squeeze=False
    )
    ref = result.examples.get((names[0], 0))
    # Python floats, so that the float32 panels stay float32 (a numpy float64 would promote them).
    lo, hi = (float(v) for v in (np.percentile(ref, [1, 99.8]) if ref is not None else (0, SATURATION)))
    for i, n in enumerate(names):
        for j, s in enumerate(sevs):
            ax = axes[i][j]
            img = result.examples.get((n, s))
            if img is not None:
                # Twice the panel's 170 px at 100 dpi is all a reader sees; full size in float64 cost
                # ~150 MB over the figure, the peak of a whole run.
                shown = render.downscale(img, EXAMPLE_PX)
                ax.imshow(np.clip((shown - lo) / max(hi - lo, 1), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"severity {s}", fontsize=8)
            if j == 0:
                ax.set_ylabel(n, fontsize=7)
    fig.suptitle("One query under each perturbation (fixed display window)", fontsize=9)
    fig.tight_layout()
    return fig


def report_figures(result: RobustnessResult, summary: list[dict]) -> list[tuple[str, Any]]:
    """The report's figures in page order, as ``(title, figure or None)``."""
    perturbations = list(result.config.perturbations)
    figures: list[tuple[str, Any]] = [
        (
            "Metric vs severity (mean, 95 % interval; dashed: chance)",
            curves_figure(summary, perturbations),
        )
    ]
    figures.append(("Defocus curve (metric vs |dz|)", defocus_figure(summary)))
    figures.append(("Drift at the highest severity", drift_figure(result.rows, perturbations)))
    heat, key = heatmap_figure(result)
    figures.append(("Clean vs perturbed embeddings", heat))
    figures.append(("t-SNE", tsne_figure(result, result.config.seed)))
    figures.append(("Example images", examples_figure(result)))
    return figures
