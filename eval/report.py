"""Write a retrieval-robustness report: report.json, CSV tables and a self-contained report.html.

``report.json`` holds every number and the full configuration and nothing time-dependent, so the same
index, seed and options give a byte-identical file. Plots are matplotlib PNGs embedded in the HTML.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from eval import intervals, perturb
from eval.robustness import NATURAL, RobustnessResult
from indexer.bbbc006.constants import SATURATION
from indexer.core.atomic import atomic_write_json, atomic_write_text
from indexer.core.csv_safe import escape_formula
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
HEADLINE = (
    "self_at_1",
    "overlap_at_k",
    "jaccard_at_k",
    "rbo",
    "kendall_tau",
    "drift_cosine",
    "drift_normalised",
)
#: The longer side, in pixels, of each image of the example figure: twice what a 1.7-inch panel shows at
#: the report's 100 dpi (a 696 x 520 BBBC006 image is drawn block-averaged to 348 x 260).
EXAMPLE_PX = 348
#: Metrics whose chance level and chance-corrected score the headline shows.
HEADLINE_CHANCE = ("self_at_1", "overlap_at_k", "jaccard_at_k", "rbo")
#: Columns of the headline table printed by the CLI and written into the HTML.
TABLE_COLUMNS = ("perturbation", "severity", "n", "gallery", "self_at_1", "self_at_1_chance", "overlap_at_k",
                 "overlap_at_k_chance", "overlap_at_k_corrected", "rbo", "rbo_chance", "rbo_corrected",
                 "drift_normalised")  # fmt: skip


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if not np.isfinite(v) else round(v, 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def report_dict(result: RobustnessResult, index_meta: dict[str, Any]) -> dict[str, Any]:
    """Everything report.json holds (deterministic for a seed)."""
    cfg = result.config
    return _clean(
        {
            "index": index_meta,
            "config": {
                "perturbations": list(cfg.perturbations),
                "severities": list(cfg.severities),
                "k": cfg.k,
                "n_queries": len(result.query_ids),
                "seed": cfg.seed,
                "rbo_p": cfg.rbo_p,
                "reference_z": cfg.reference_z,
                "exclude": cfg.exclude,
                "ladders": {
                    n: {"unit": p.unit, "levels": list(p.levels)} for n, p in perturb.PERTURBATIONS.items()
                },
            },
            "query_ids": result.query_ids,
            "skipped_queries": result.skipped_queries,
            "median_nn_distance": result.median_nn_distance,
            "gallery": result.gallery,
            "ann_recall_at_k": result.ann_recall,
            "ann_recall_interval": _ann_interval(result),
            "summary": result.summary(),
        }
    )


def _ann_interval(result: RobustnessResult) -> list[float] | None:
    # ANN recall is a proportion per query; the queries are the independent units (clusters of k).
    if result.ann_recall is None or not np.isfinite(result.ann_recall):
        return None
    n = len(result.query_ids)
    return list(intervals.proportion_ci(result.ann_recall * n, n))


def _png(fig) -> str:
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


def _curves(summary: list[dict], perturbations: list[str]):
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


def _defocus_curve(summary: list[dict]):
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


def _drift_hist(rows: list[dict], perturbations: list[str]):
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


def _heatmap(result: RobustnessResult):
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


def _tsne(result: RobustnessResult, seed: int):
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


def _examples(result: RobustnessResult):
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


def headline_rows(summary: list[dict]) -> list[dict]:
    """Per perturbation, its worst severity (the largest evaluated), for the terminal and README table.

    Each row keeps the metric's interval (``<m>_low``, ``<m>_high``), its chance level and
    chance-corrected score, the number of rows ``n`` and of queries, ``small_n`` and the median gallery
    size behind the lists (``gallery``).
    """
    out = []
    for name, curve in sorted({(e["perturbation"], e.get("curve") or "") for e in summary}):
        pts = [e for e in summary if e["perturbation"] == name and (e.get("curve") or "") == curve]
        worst = max(pts, key=lambda e: e["severity"])
        label = f"{name} ({curve})" if curve else name
        row = {"perturbation": label, "severity": worst["severity"], "value": worst["value"], "n": worst["n"],
               "source": worst.get("source"),
               "n_queries": worst.get("n_queries"), "small_n": worst.get("small_n", False),
               "gallery": worst.get("candidates")}  # fmt: skip
        for m in HEADLINE:
            row[m] = worst[m]
            row[f"{m}_low"], row[f"{m}_high"] = worst.get(f"{m}_low"), worst.get(f"{m}_high")
        for m in HEADLINE_CHANCE:
            row[f"{m}_chance"] = worst.get(f"{m}_chance")
            row[f"{m}_corrected"] = worst.get(f"{m}_corrected")
        out.append(row)
    return out


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A plain-text table of rows: floats to 3 decimals, a metric with an interval as ``x [low, high]``,
    and ``n`` marked ``*`` where the group has fewer than 5 queries."""

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    def cell(r: dict, c: str) -> str:
        v = r.get(c)
        if c == "n" and r.get("small_n"):
            return f"{v}*"
        if c == "gallery" and isinstance(v, float) and v.is_integer():
            return str(int(v))
        low, high = r.get(f"{c}_low"), r.get(f"{c}_high")
        if c in HEADLINE and v is not None and (low is not None or high is not None):
            # A missing bound is an unbounded one (JSON has no inf): a one-query ratio has no upper bound.
            return f"{v:.3f} [{fmt_bound(low, '-inf')}, {fmt_bound(high, 'inf')}]"
        return fmt(v)

    def fmt_bound(b, unbounded: str) -> str:
        return unbounded if b is None else f"{b:.3f}"

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    if any(r.get("small_n") for r in rows):
        lines.append("* fewer than 5 queries: an anecdote, not a result")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        cols = list(rows[0].keys())
        for r in rows:
            cols += [c for c in r if c not in cols]
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows({k: escape_formula(v) for k, v in r.items()} for r in _clean(rows))  # paths, tags
    atomic_write_text(path, buf.getvalue())


def write_report(result: RobustnessResult, out_dir: Path, index_meta: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, rows.csv, summary.csv and report.html into ``out_dir``; return report.json's dict."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = report_dict(result, index_meta)
    atomic_write_json(out_dir / "report.json", rep)
    _write_csv(out_dir / "rows.csv", result.rows)
    _write_csv(out_dir / "summary.csv", rep["summary"])
    perturbations = list(result.config.perturbations)
    figures: list[tuple[str, Any]] = [
        ("Metric vs severity (mean, 95 % interval; dashed: chance)", _curves(rep["summary"], perturbations))
    ]
    figures.append(("Defocus curve (metric vs |dz|)", _defocus_curve(rep["summary"])))
    figures.append(("Drift at the highest severity", _drift_hist(result.rows, perturbations)))
    heat, key = _heatmap(result)
    figures.append(("Clean vs perturbed embeddings", heat))
    figures.append(("t-SNE", _tsne(result, result.config.seed)))
    figures.append(("Example images", _examples(result)))
    head = headline_rows(rep["summary"])
    table = html.escape(format_table(head, TABLE_COLUMNS))
    g = result.gallery or {}
    ann = rep.get("ann_recall_interval")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Retrieval robustness report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd;margin:.3em 0}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
        "h2{margin-top:1.4em}</style></head><body>",
        "<h1>Retrieval robustness report</h1>",
        f"<p>Index: <code>{html.escape(str(index_meta.get('location')))}</code>, "
        f"{index_meta.get('count')} images, model <code>{html.escape(str(index_meta.get('model')))}</code>. "
        f"{len(result.query_ids)} queries, k = {result.config.k}, seed {result.config.seed}, "
        f"RBO p = {result.config.rbo_p}. Median nearest-neighbour cosine distance in the index: "
        f"{result.median_nn_distance:.4g}."
        + (
            f" ANN recall@{result.config.k} of the store vs exact FAISS: {result.ann_recall:.4f}"
            + (f" [{ann[0]:.4f}, {ann[1]:.4f}]." if ann else ".")
            if result.ann_recall is not None
            else ""
        )
        + "</p>",
        "<h2>Gallery</h2>",
        f"<p>Exclusion <code>{html.escape(str(g.get('exclude')))}</code>: each query's "
        + {
            "none": "own image stays in both lists",
            "image": "own image leaves both lists",
            "site": "whole site (every z-slice and channel) leaves both lists",
            "well": "whole well leaves both lists",
        }.get(str(g.get("exclude")), "")  # fmt: skip
        + f". Candidates per query: {g.get('candidates_min')} to {g.get('candidates_max')} (median "
        f"{g.get('candidates_median')}) of {g.get('index_size')} indexed images. A query needs at least "
        f"k + 1 = {g.get('min_candidates')}; {len(g.get('queries_skipped', []))} skipped"
        + (
            f", {len(g.get('queries_without_known_group', []))} with no known {g.get('exclude')} "
            "excluded only themselves"
            if g.get("queries_without_known_group")
            else ""
        )
        + f". Median pairwise cosine similarity of the index: {g.get('median_pairwise_cosine', float('nan')):.3f}"
        + " (near 1: embeddings nearly parallel, so small drifts reorder neighbours)"
        + ". Queries by provenance: "
        + ", ".join(f"{v} {html.escape(k)}" for k, v in g.get("query_sources", {}).items())
        + ".</p>",
        "<h2>Headline: each perturbation at its highest severity</h2>",
        f"<pre>{table}</pre>",
        "<p>n: rows (queries x slices); gallery: median candidates per list. Intervals are 95 %: "
        "Clopper-Pearson for self_at_1, a studentised bootstrap over queries for the means. _chance: the "
        "expected score of two random top-k lists from the same gallery (self_at_1: 1 / (gallery + 1), the "
        "source counted); "
        "_corrected: (x - chance) / (1 - chance), 0 at chance and 1 when perfect. self_at_1: the clean "
        "source image is the first result of the perturbed query. overlap/jaccard/RBO/kendall_tau: agreement "
        "of the perturbed query's top-k with the clean query's top-k. drift: cosine distance between clean "
        "and perturbed embeddings, normalised by the median nearest-neighbour distance.</p>",
    ]
    for title, fig in figures:
        if fig is None:
            continue
        parts.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{_png(fig)}'>"
        )
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(rep["config"], indent=1)) + "</pre>")
    parts.append("<p>Files: report.json (all numbers), summary.csv, rows.csv (per query).</p></body></html>")
    atomic_write_text(out_dir / "report.html", "\n".join(parts))
    return rep
