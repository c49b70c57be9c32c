"""``mae-eval``: retrieval-robustness evaluation and model inspection. Each command parses options,
builds the config and calls one function."""

from __future__ import annotations

from pathlib import Path

import click

from eval import gallery
from eval import perturb as _perturbations
from indexer.cli.options import (
    faiss_search_options,
    handle_errors,
    redis_options,
    require_extra,
    setup_logging,
    verbose_option,
)
from indexer.core.errors import ConfigError


def _severities(spec: str) -> tuple[int, ...]:
    try:
        if "-" in spec:
            a, b = spec.split("-")
            return tuple(range(int(a), int(b) + 1))
        return tuple(int(s) for s in spec.split(","))
    except ValueError as e:
        raise ConfigError(f"--severities takes 0-5 or 0,2,5, got {spec!r}") from e


def _query_ids(path: Path | None) -> tuple[int, ...]:
    if path is None:
        return ()
    import pandas as pd

    df = pd.read_csv(path)
    if "id" not in df.columns:
        raise ConfigError(f"{path} needs an 'id' column (ids as printed by mae-search --format csv)")
    return tuple(int(i) for i in df["id"])


def report_folder(out: Path) -> None:
    """Refuse, before any work, an ``--out`` that exists and is not a folder (exit 2)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: give a folder for the report")


def _evaluate(index_dir, redis_url, redis_index, queries, query_list, perturb, severities, k, seed, rbo_p,
              device, out, model=None, exclude="site", nprobe=None, ef_search=None, rerank=None):  # fmt: skip
    require_extra("eval")  # report.py needs scipy, matplotlib and scikit-learn: say so before any query
    report_folder(out)
    from eval import perturb as perturbations
    from eval.robustness import NATURAL, RobustnessConfig
    from indexer.stores import open_stores
    from indexer.stores.binding import redis_config_for

    names = tuple(perturb.split(",")) if perturb else (*perturbations.PERTURBATIONS, NATURAL)
    config = RobustnessConfig(perturbations=names, severities=_severities(severities), k=k, n_queries=queries,
                              query_ids=_query_ids(query_list), seed=seed, rbo_p=rbo_p, exclude=exclude)  # fmt: skip
    redis = redis_config_for(index_dir, redis_url, redis_index, writing=False)
    with open_stores(index_dir, redis, read_only=True, nprobe=nprobe, ef_search=ef_search,
                     rerank=rerank) as stores:  # fmt: skip
        return _evaluate_stores(stores, index_dir, redis_url, config, device, out, model)


def _evaluate_stores(stores, index_dir, redis_url, config, device, out, model=None):
    from tqdm.auto import tqdm

    from eval.report import TABLE_COLUMNS, format_table, headline_rows, write_report
    from eval.robustness import run_robustness
    from indexer.stores.binding import store_identity
    from retriever.catalog import Catalog
    from retriever.search import Retriever

    mirror, store = stores.faiss, stores.primary
    # The reference is exact search over the shards' float vectors, whatever kind the mirror's index is;
    # an approximate mirror searched itself gets its own recall reported.
    exact = mirror if mirror.kind.exact else mirror.exact_searcher()
    retriever = Retriever.open(store, model_override=model, device=device, index_dir=index_dir)
    bar = tqdm(total=1, desc="robustness", unit="step")

    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    catalog = Catalog(store, vector_store=mirror)  # a Redis store takes the mirror's record columns
    try:
        result = run_robustness(retriever, config, progress=tick, exact=exact if store is not exact else None,
                                catalog=catalog)  # fmt: skip
    finally:
        bar.close()  # an error's message then stands alone, not after a half-drawn bar
    if result.skipped_queries:
        skipped = result.skipped_queries
        n = len(skipped) + len(result.query_ids)
        click.echo(f"Warning: {len(skipped)} of {n} query images cannot be read (moved since the build?) and "
                   "are left out: " + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5]), err=True)  # fmt: skip
    manifest = store.read_manifest() or {}
    meta = {"location": str(index_dir), "index_uid": manifest.get("index_uid"), "count": store.count(),
            "model": manifest.get("model", {}).get("name"),
            "backend": "redis" if redis_url else "faiss", "answered_by": store_identity(store)}  # fmt: skip
    rep = write_report(result, out, meta)
    click.echo(format_table(headline_rows(rep["summary"]), TABLE_COLUMNS))
    g = rep["gallery"]
    click.echo(f"Gallery (--exclude {g['exclude']}): {g['candidates_min']}-{g['candidates_max']} candidates per "
               f"query of {g['index_size']} images; {len(g['queries_skipped'])} queries skipped (fewer than "
               f"k + 1 = {g['min_candidates']})", err=True)  # fmt: skip
    click.echo(f"Report: {Path(out) / 'report.html'}", err=True)
    return rep


_common = [
    click.option("--queries", default=50, show_default=True, help="Query images sampled from the index."),
    click.option(
        "--query-list", type=click.Path(exists=True, path_type=Path), help="CSV with an 'id' column."
    ),
    click.option(
        "--perturb",
        default=None,
        help=f"Comma list of: {', '.join(_perturbations.PERTURBATIONS)}, defocus_z (the same field of view at "
        "another z of the index). Default: all.",
    ),
    click.option("--severities", default="0-5", show_default=True),
    click.option("-k", "k", default=10, show_default=True),
    click.option("--seed", default=0, show_default=True),
    click.option("--rbo-p", default=0.9, show_default=True),
    click.option("--device", default="auto", show_default=True),
    click.option(
        "--exclude",
        type=click.Choice(list(gallery.EXCLUDE)),
        default=gallery.DEFAULT_EXCLUDE,
        show_default=True,
        help="Which of each query's relatives leave BOTH the clean and the perturbed top-k: "
        "site = its other z-slices and channels (near-duplicates).",
    ),
    click.option("--model", default=None, help="Another path to the index's model weights (checked)."),
]


def _with_common(fn):
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-microscopy")
def main() -> None:
    """Measure how robust retrieval is to noise, blur, defocus and other perturbations.

    \b
    Example:
      mae-eval robustness --index runs/idx --queries 20 --out runs/report
    """


@main.command()
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, help="ViT-MAE folder with its decoder (from `mae-index pretrain`).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG to write.")
@click.option("--mask-ratio", default=0.75, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@verbose_option
@handle_errors
def reconstruct(image, model, out, mask_ratio, seed, verbose):
    """Save masked input, reconstruction and original of IMAGE side by side.

    \b
    Example:
      mae-eval reconstruct image.tif --model runs/mae-pretrained --out runs/reconstruct.png
    """
    setup_logging(verbose)
    from eval.reconstruct import reconstruct as run

    loss = run(model, image, out, mask_ratio=mask_ratio, seed=seed)
    click.echo(f"Wrote {out} (masked-patch loss {loss:.4f})", err=True)


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@redis_options
@_with_common
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@faiss_search_options
@verbose_option
@handle_errors
def robustness(index_dir, redis_url, redis_index, queries, query_list, perturb, severities, k, seed, rbo_p,
               device, exclude, model, out, nprobe, ef_search, rerank, verbose):  # fmt: skip
    """Top-k consistency and drift of clean vs perturbed queries; writes report.json/CSV/HTML.

    With --redis-url the queries go to Redis and its ANN recall@k against the exact FAISS index is
    reported too. Every score comes with its 95 % interval, its chance level (random top-k lists from
    the same gallery) and the chance-corrected score. A query needs at least k + 1 candidates once
    its relatives are excluded; one with fewer is reported and skipped.

    \b
    Example:
      mae-eval robustness --index runs/idx --queries 20 --out runs/report
    """
    setup_logging(verbose)
    _evaluate(index_dir, redis_url, redis_index, queries, query_list, perturb, severities, k, seed, rbo_p,
              device, out, model, exclude, nprobe, ef_search, rerank)  # fmt: skip


@main.command()
@click.option("--index", "indexes", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Index folder, one per model (repeatable).")  # fmt: skip
@_with_common
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for all reports.")
@verbose_option
@handle_errors
def compare(
    indexes, queries, query_list, perturb, severities, k, seed, rbo_p, device, exclude, model, out, verbose
):
    """Run the same evaluation on several indexes (e.g. one per model) and put them side by side.

    \b
    Example:
      mae-eval compare --index runs/idx-tiny --index runs/idx-base --queries 20 --out runs/compare
    """
    setup_logging(verbose)
    report_folder(out)
    import json

    from eval.report import format_table, headline_rows

    combined = []
    for i, idx in enumerate(indexes):
        sub = Path(out) / f"{i:02d}-{Path(idx).name}"
        rep = _evaluate(
            idx,
            None,
            None,
            queries,
            query_list,
            perturb,
            severities,
            k,
            seed,
            rbo_p,
            device,
            sub,
            model,
            exclude,
        )
        for row in headline_rows(rep["summary"]):
            combined.append({"index": str(idx), "model": rep["index"]["model"], **row})
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "compare.json").write_text(json.dumps(combined, indent=2) + "\n")
    table = format_table(combined, ("index", "perturbation", "severity", "n", "gallery", "self_at_1",
                                     "overlap_at_k", "overlap_at_k_chance", "rbo", "rbo_chance"))  # fmt: skip
    (Path(out) / "compare.txt").write_text(table + "\n")
    click.echo(table)


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@click.option("--queries", default=50, show_default=True, help="Query images sampled from the index.")
@click.option("-k", "k", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--compile", "with_compile", is_flag=True, help="Also compare torch.compile'd fp32 and bf16.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the rows as JSON here too.")
@verbose_option
@handle_errors
def precision(index_dir, queries, k, seed, with_compile, device, out, verbose):
    """How far bf16 (and --compile) move retrieval against fp32 on the same index.

    The same query images are embedded under each precision and searched in the index; each top-k list
    is compared with the fp32 list of the same query (overlap@k, identical lists), each vector with its
    fp32 vector (cosine), with the embedding time per image.

    \b
    Example:
      mae-eval precision --index runs/idx --queries 20 --compile
    """
    setup_logging(verbose)
    import json

    from eval.precision import run_precision
    from eval.queries import choose_queries, read_queries
    from eval.report import format_table
    from eval.robustness import RobustnessConfig
    from indexer.stores import open_stores
    from retriever.catalog import Catalog
    from retriever.search import Retriever

    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a JSON file path")
    with open_stores(index_dir, None, read_only=True) as stores:
        store = stores.primary
        records = Catalog(store).records
        chosen, raws, skipped = read_queries(
            choose_queries(records, RobustnessConfig(n_queries=queries, seed=seed))
        )
        if skipped:
            click.echo(f"Warning: {len(skipped)} query images cannot be read and are left out", err=True)

        def open_retriever(variant):
            return Retriever.open(store, device=device, precision=variant.precision, compile=variant.compile,
                                  index_dir=index_dir)  # fmt: skip

        rows = run_precision(open_retriever, raws, k=k, with_compile=with_compile)
    columns = ("variant", "precision", "n", "overlap_at_k", "overlap_at_k_min", "identical_lists",
               "cosine_min", "ms_per_image", "first_image_s")  # fmt: skip
    # Cosines of bf16 and fp32 vectors differ in the 4th-6th decimal: the table's 3 would hide it.
    shown = [{**r, "cosine_min": f"{r['cosine_min']:.6f}"} for r in rows]
    click.echo(format_table(shown, columns))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"index": str(index_dir), "k": k, "rows": rows}, indent=2) + "\n")


@main.command()
@click.option(
    "--index", "index_dir", required=True, type=click.Path(exists=True, path_type=Path), help="Index folder."
)
@click.option(
    "--label", required=True, help="Record field (well, plate, ...) or --metadata tag to retrieve by."
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option(
    "--baseline",
    default="histogram,classical",
    show_default=True,
    help="Comma list of baselines from the indexed images: histogram, classical ('' for none).",
)
@click.option(
    "--level",
    type=click.Choice(["image", "well"]),
    default="image",
    show_default=True,
    help="Compare images, or wells (the mean profile of their images).",
)
@click.option(
    "--negatives", default=None, help="LABEL=VALUE: negatives are these controls (default: other labels)."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap over wells.")
@verbose_option
@handle_errors
def phenotype(index_dir, label, out, baseline, level, negatives, seed, verbose):  # fmt: skip
    """mAP of retrieval by a label (copairs' definition), the model against baselines, with intervals.

    Positives share the label in another well (another image where there are no wells); negatives have
    another label, or are the --negatives controls. Writes phenotype.json, phenotype.csv and
    phenotype.html; intervals resample wells; chance is the mAP of random rankings.

    \b
    Example:
      mae-eval phenotype --index runs/idx --label phenotype_class --out runs/pheno --level well
    """
    setup_logging(verbose)
    require_extra("eval")
    from eval.phenotype_run import PhenotypeConfig, parse_negatives, run_phenotype, write_outputs
    from indexer.stores import open_stores

    names = tuple(b.strip() for b in baseline.split(",") if b.strip())
    config = PhenotypeConfig(label=label, baselines=names, level=level, negatives=parse_negatives(negatives),
                             seed=seed)  # fmt: skip
    with open_stores(index_dir, None, read_only=True) as stores:
        result = run_phenotype(stores.faiss, config)
    write_outputs(result, Path(out))
    for r in result["overall"]:
        if r["map"] is None:
            click.echo(f"{r['embedding']:10s} no scored query")
            continue
        click.echo(f"{r['embedding']:10s} mAP {r['map']:.3f} [{r['map_low']:.3f}, {r['map_high']:.3f}]  "
                   f"chance {r['chance']:.3f}  ({r['n_queries']} queries, {r['n_groups']} wells)")  # fmt: skip
    click.echo(f"Report: {Path(out) / 'phenotype.html'}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
