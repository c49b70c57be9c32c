"""``mae-eval phenotype``: how well an index's embeddings retrieve images (or wells) of the same label,
beside baselines computed from the same source images. Reads the index; the maths is
:mod:`eval.phenotype` (mAP as copairs defines it) and :mod:`eval.profiles` (the baselines).

Writes ``phenotype.json`` (``overall``: one ``{embedding, map, map_low, map_high, chance, ...}`` per
embedding; ``by_label``: the same per label value), ``phenotype.csv`` (both, one row each) and
``phenotype.html`` (the comparison plot).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval import intensity, phenotype, profiles
from eval.intervals import cluster_bootstrap
from indexer.core.errors import ConfigError, DecodeError, MaeError
from indexer.core.records import RECORD_FIELDS, ImageRecord

log = logging.getLogger(__name__)

EMBEDDINGS = ("model", "histogram", "classical")
BASELINES = EMBEDDINGS[1:]
LEVELS = ("image", "well")


@dataclass(frozen=True)
class PhenotypeConfig:
    """One ``mae-eval phenotype`` run: the label (a record field or a ``--metadata`` tag), the baselines,
    the level profiles are compared at, the negative controls ``(key, value)`` and the bootstrap seed."""

    label: str
    baselines: tuple[str, ...] = BASELINES
    level: str = "image"
    negatives: tuple[str, str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ConfigError(f"unknown --baseline {bad[0]!r}; choose from {', '.join(BASELINES)}")
        if self.level not in LEVELS:
            raise ConfigError(f"unknown --level {self.level!r}; choose from {', '.join(LEVELS)}")


def parse_negatives(spec: str | None) -> tuple[str, str] | None:
    """``LABEL=VALUE`` -> ``(LABEL, VALUE)``; ``None`` stays ``None``."""
    if spec is None:
        return None
    key, sep, value = spec.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"--negatives takes LABEL=VALUE (e.g. treatment=DMSO), got {spec!r}")
    return key.strip(), value.strip()


def value_of(record: ImageRecord, key: str) -> str | None:
    """A record's ``key``: one of its fields (well, site, ...), else its ``--metadata`` tag of that name."""
    if key in RECORD_FIELDS:
        v = getattr(record, key)
        return None if v is None else str(v)
    return dict(record.tags).get(key)


def _labelled(records: Sequence[ImageRecord], key: str) -> list[ImageRecord]:
    kept = [r for r in records if value_of(r, key) is not None]
    if not kept:
        tags = sorted({k for r in records for k, _ in r.tags})
        raise ConfigError(
            f"no indexed image has a {key!r}: labels are record fields ({', '.join(RECORD_FIELDS)}) or "
            f"--metadata tags ({', '.join(tags) or 'this index has none'})"
        )
    return kept


def baseline_profiles(
    records: Sequence[ImageRecord], preprocess, names: Sequence[str]
) -> tuple[list[int], dict[str, np.ndarray]]:
    """The baseline profiles of the images ``records`` name, read from their recorded paths.

    Returns the positions in ``records`` that could be read (an image moved since the build is left out,
    with a warning) and, per baseline, its ``(n_read, features)`` profiles.
    """
    import torch

    from indexer.images.sources import load_image
    from indexer.model.preprocess import normalise_intensity

    kept, images = [], []
    for i, r in enumerate(records):
        try:
            images.append(load_image(r.path))
            kept.append(i)
        except (OSError, DecodeError) as e:
            log.warning("left out of the baselines (and so of every embedding): %s: %s", r.path, e)
    if not images:
        raise MaeError(
            "none of the indexed images can be read from their recorded paths: run where the build ran"
        )
    out: dict[str, np.ndarray] = {}
    if "histogram" in names:
        units = []
        for im in images:
            t = torch.from_numpy(im.astype(np.float32 if im.dtype.kind == "f" else np.int32))[None]
            units.append(profiles.histogram_profile(normalise_intensity(t, preprocess.intensity)[0].numpy()))
        out["histogram"] = np.stack(units)
    if "classical" in names:
        kinds = [records[i].source for i in kept]
        scales = intensity.scales_by_type(images, kinds)
        out["classical"] = profiles.zscore(
            [profiles.classical_profile(im, s.full_scale) for im, s in zip(images, scales)]
        )
    return kept, out


def score(
    vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray, controls: np.ndarray | None, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """mAP with its interval over groups (wells) and chance, overall and per label value."""
    aps, n_pos, n_total = phenotype.pair_average_precisions(vectors, labels, groups, controls)

    def summary(mask: np.ndarray) -> dict[str, Any]:
        ok = mask & np.isfinite(aps)
        if not ok.any():
            return {
                "map": None,
                "map_low": None,
                "map_high": None,
                "chance": None,
                "n_queries": 0,
                "n_groups": 0,
            }
        est = cluster_bootstrap(aps[ok], groups[ok], (0.0, 1.0), seed=seed)
        return {"map": est.mean, "map_low": est.low, "map_high": est.high,
                "chance": phenotype.chance_of(n_pos[ok], n_total[ok], aps[ok]),
                "n_queries": int(ok.sum()), "n_groups": len(set(groups[ok].tolist()))}  # fmt: skip

    overall = summary(np.ones(len(labels), bool))
    per_label = [{"label": str(v), **summary(labels == v)} for v in sorted(set(labels.tolist()))]
    return overall, per_label


def run_phenotype(store, config: PhenotypeConfig, catalog=None) -> dict[str, Any]:
    """Score the index's embeddings and the chosen baselines; the ``phenotype.json`` content.

    Raises
    ------
    ConfigError
        No image has the label, or no query has both a positive and a negative pair.
    """
    from indexer.core.config import PreprocessConfig
    from retriever.catalog import Catalog

    catalog = catalog or Catalog(store)
    table = catalog.records
    records = _labelled([r for r in table.get_many(np.sort(table.ids())) if r is not None], config.label)
    embeddings: dict[str, np.ndarray] = {}
    if config.baselines:
        preprocess = PreprocessConfig.from_dict((store.read_manifest() or {})["preprocess"])
        kept, base = baseline_profiles(records, preprocess, config.baselines)
        records = [records[i] for i in kept]
        embeddings.update(base)
    embeddings = {"model": store.get_vectors([r.id for r in records]), **embeddings}
    labels = np.array([value_of(r, config.label) for r in records])
    # The well is the independent unit (its sites share a treatment); an image without a well is its own.
    groups = np.array([f"{r.plate}/{r.well}" if r.well else f"image {r.id}" for r in records])
    controls = None
    if config.negatives is not None:
        key, value = config.negatives
        controls = np.array([value_of(r, key) == value for r in records])
        if not controls.any():
            raise ConfigError(f"--negatives {key}={value}: no indexed image has it")
    if config.level == "well":
        ctrl_by_group = dict(zip(groups, controls)) if controls is not None else None
        rows = {}
        for name, vec in embeddings.items():
            try:
                prof, well_labels, wells = phenotype.well_profiles(vec, labels, groups)
            except ValueError as e:
                raise ConfigError(f"--level well: {e}") from e
            rows[name] = (prof, well_labels, wells)
        labels, groups = rows["model"][1], rows["model"][2]
        embeddings = {n: r[0] for n, r in rows.items()}
        controls = None if ctrl_by_group is None else np.array([ctrl_by_group[g] for g in groups])
    overall, by_label = [], []
    for name in (e for e in EMBEDDINGS if e in embeddings):
        total, per = score(embeddings[name], labels, groups, controls, config.seed)
        overall.append({"embedding": name, **total})
        by_label += [{"embedding": name, **row} for row in per]
    if all(o["map"] is None for o in overall):
        raise ConfigError(
            f"no {config.level} has a positive (same {config.label} in another well) and a negative pair: "
            "label more wells, or use --level image"
        )
    return {"label": config.label, "level": config.level, "negatives": "=".join(config.negatives or ()) or None,
            "n_profiles": len(labels), "n_groups": len(set(groups.tolist())),
            "overall": overall, "by_label": by_label}  # fmt: skip


def write_outputs(result: dict[str, Any], out_dir: Path) -> None:
    """``phenotype.json``, ``phenotype.csv`` and ``phenotype.html`` (the comparison plot) in ``out_dir``."""
    from indexer.core.csv_safe import dict_writer, escape_formula

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "phenotype.json").write_text(json.dumps(result, indent=1))
    cols = ("embedding", "label", "map", "map_low", "map_high", "chance", "n_queries", "n_groups")
    with open(out_dir / "phenotype.csv", "w", newline="", encoding="utf-8") as f:
        w = dict_writer(f, cols, extrasaction="ignore")
        w.writeheader()
        rows = [*({**row, "label": "(all)"} for row in result["overall"]), *result["by_label"]]
        # Labels are a --metadata table's values: a formula is made inert, a line break quoted.
        w.writerows({k: escape_formula(v) for k, v in row.items()} for row in rows)
    (out_dir / "phenotype.html").write_text(_html(result))


def _html(result: dict[str, Any]) -> str:
    import html

    import matplotlib

    from eval.figures import png as _png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["overall"] if r["map"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(rows))
    maps = np.array([r["map"] for r in rows])
    err = np.array([[r["map"] - r["map_low"], r["map_high"] - r["map"]] for r in rows]).T
    ax.bar(x, maps, yerr=err, capsize=4, color="#4c78a8")
    ax.scatter(x, [r["chance"] for r in rows], marker="_", s=400, color="black", label="chance", zorder=3)
    ax.set_xticks(x, [r["embedding"] for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"mAP ({result['label']}, {result['level']} level)")
    ax.legend(loc="upper right")
    table = "".join(
        f"<tr><td>{html.escape(r['embedding'])}</td><td>{r['map']:.3f} [{r['map_low']:.3f}, {r['map_high']:.3f}]"
        f"</td><td>{r['chance']:.3f}</td><td>{r['n_queries']}</td><td>{r['n_groups']}</td></tr>"
        for r in rows
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>Phenotype retrieval: {html.escape(result['label'])}</title>"
        f"<h1>Phenotype retrieval by {html.escape(result['label'])}</h1><img src='data:image/png;base64,{_png(fig)}'>"
        "<table><tr><th>embedding</th><th>mAP [95 % interval over wells]</th><th>chance</th><th>queries</th>"
        f"<th>wells</th></tr>{table}</table><p>mAP as copairs defines it: positives share the label in "
        "another well (another image where there are no wells); negatives have another label, or are the "
        "controls with --negatives. Chance: the expected mAP of random rankings.</p>"
    )
