"""``mae-index map``: lay out an index's stored vectors in 2-D once (t-SNE), for the explorer's map."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import click

from indexer.cli.options import format_option, handle_errors, setup_logging, verbose_option
from indexer.vectors.layout import MAP_FILE, MAX_POINTS


@click.command("map")
@click.option(
    "--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder (FAISS)."
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of the layout (and of the sample)."
)
@click.option("--max-points", default=MAX_POINTS, show_default=True, type=click.IntRange(min=1),
              help="Lay out at most this many images (a seeded sample of a larger index).")  # fmt: skip
@format_option("text", "json")
@verbose_option
@handle_errors
def map_command(index_dir, seed, max_points, fmt, verbose):
    """Compute the embedding map of an index (a 2-D t-SNE layout of its vectors) and keep it in the
    index folder as map.npz, for `mae-search serve`'s explorer. Run it again after adding images: the
    explorer marks a map made before them as stale.

    \b
    Example:
      mae-index map --index runs/idx
    """
    setup_logging(verbose)
    from indexer.stores import open_stores
    from indexer.vectors.layout import make_map

    t0 = time.perf_counter()
    with open_stores(index_dir, None, read_only=True) as stores:
        emap = make_map(stores.faiss, index_dir, seed, max_points)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"map": str(Path(index_dir) / MAP_FILE), "points": len(emap.ids), "method": emap.method,
           "layout_seconds": emap.seconds, "seconds": round(time.perf_counter() - t0, 3),
           "peak_rss_mb": round(peak_mb, 1)}  # fmt: skip
    if fmt == "json":
        click.echo(json.dumps(out))
    else:
        click.echo(f"Laid out {out['points']} images ({emap.method}) in {out['seconds']:.1f} s, peak memory "
                   f"{peak_mb:.0f} MB: {out['map']}")  # fmt: skip
