"""Write a retrieval-robustness report: report.json, CSV tables and a self-contained report.html.

``report.json`` holds every number and the full configuration and nothing time-dependent, so the same
index, seed and options give a byte-identical file. Plots are matplotlib PNGs embedded in the HTML.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from eval import intervals, perturb
from eval.figures import png, report_figures
from eval.robustness import RobustnessResult
from indexer.core.atomic import atomic_write_json, atomic_write_text
from indexer.core.csv_safe import dict_writer, escape_formula
from retriever.reports import REPORT_FILES

HEADLINE = (
    "self_at_1",
    "overlap_at_k",
    "jaccard_at_k",
    "rbo",
    "kendall_tau",
    "drift_cosine",
    "drift_normalised",
)
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
            "files": list(REPORT_FILES),  # what the explorer may serve of this folder, nothing else
        }
    )


def _ann_interval(result: RobustnessResult) -> list[float] | None:
    # ANN recall is a proportion per query; the queries are the independent units (clusters of k).
    if result.ann_recall is None or not np.isfinite(result.ann_recall):
        return None
    n = len(result.query_ids)
    return list(intervals.proportion_ci(result.ann_recall * n, n))


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
        w = dict_writer(buf, cols)  # a path or tag holding \r or \n is quoted
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
    figures = report_figures(result, rep["summary"])
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
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png(fig)}'>"
        )
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(rep["config"], indent=1)) + "</pre>")
    parts.append("<p>Files: report.json (all numbers), summary.csv, rows.csv (per query).</p></body></html>")
    atomic_write_text(out_dir / "report.html", "\n".join(parts))
    return rep
