"""``mae-index export``: an index's images (or well-level profiles) as parquet, AnnData or CSV."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.cli.options import handle_errors, setup_logging, verbose_option
from indexer.stores.export import AGGREGATES, FORMATS


@click.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)),
              help="parquet and csv: metadata, tag and f0..f{d-1} vector columns; anndata (.h5ad): X the "
              "vectors, obs the metadata and tags (needs the [export] extra).")  # fmt: skip
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="File to write.")
@click.option("--aggregate", type=click.Choice(list(AGGREGATES)), default=None,
              help="well: one row per plate, well and channel, the median of its images' vectors, with "
              "their count (as pycytominer's aggregate).")  # fmt: skip
@verbose_option
@handle_errors
def export(index_dir, fmt, out, aggregate, verbose):
    """Write the index's images as a table: one row per image, its id, fields, tags and vector.

    \b
    Examples:
      mae-index export --index runs/idx --format parquet --out runs/idx.parquet
      mae-index export --index runs/idx --format anndata --out runs/wells.h5ad --aggregate well
    """
    setup_logging(verbose)
    from indexer.stores import open_stores
    from indexer.stores.export import aggregate_wells, read_profiles, write_profiles

    if fmt == "anndata":
        from indexer.cli.options import require_extra

        require_extra("export")  # before the index is read
    with open_stores(index_dir, read_only=True) as stores:
        profiles = read_profiles(stores.faiss)
    n_images = len(profiles.meta)
    if aggregate == "well":
        profiles = aggregate_wells(profiles)
    write_profiles(profiles, fmt, out)
    rows = f"{len(profiles.meta)} {'well profiles' if aggregate else 'images'}"
    click.echo(f"Wrote {out}: {rows} x {profiles.vectors.shape[1]} features ({fmt}).", err=True)
    if profiles.left_out:
        click.echo(f"{profiles.left_out} of {n_images} images have no well and are left out.", err=True)
