"""``mae-index synth`` and ``mae-index fetch``: get BBBC006 images, synthetic or real."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.bbbc006.constants import FOCUS_Z
from indexer.cli.options import handle_errors
from indexer.core.errors import ConfigError


def int_list(spec: str) -> tuple[int, ...]:
    """Parse ``1,2`` or ``0-33`` (or a mix, ``1,4-6``) into a tuple of ints.

    Raises
    ------
    ConfigError
        If a part is not a number or a range.
    """
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError as e:
        raise ConfigError(f"expected numbers like 1,2 or 0-33, got {spec!r}") from e
    return tuple(out)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--wells", default="A01:B04", show_default=True, help="Wells: A01,B02 or a rectangle A01:B04.")
@click.option("--sites", default="1,2", show_default=True)
@click.option("--channels", default="1,2", show_default=True)
@click.option(
    "--z", "z_spec", default=str(FOCUS_Z), show_default=True, help="z-slices: 16 or 10,16,22 or 0-33."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--family",
    type=click.Choice(["classic", "nuclear", "actin", "clustering"]),
    default="classic",
    show_default=True,
    help="Phenotype family: classic (counts, size, brightness) or one whose classes share the intensity "
    "distribution and differ only in nuclear size/shape, actin fibres vs cortex, or cell clustering.",
)
@click.option("--workers", default=1, show_default=True, type=int,
              help="Processes rendering sites in parallel (the files do not depend on it).")  # fmt: skip
@handle_errors
def synth(out, wells, sites, channels, z_spec, seed, family, workers):
    """Write a synthetic BBBC006 look-alike (real naming, 696x520 16-bit LZW TIFF, ground-truth CSV).

    \b
    Example:
      mae-index synth runs/synth --wells A01:B04 --z 10,16,22
    """
    from indexer.bbbc006.synthetic import SyntheticConfig, generate, well_range

    config = SyntheticConfig(
        out_dir=out,
        wells=well_range(wells),
        sites=int_list(sites),
        channels=int_list(channels),
        z_slices=int_list(z_spec),
        seed=seed,
        family=family,
    )
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    s = generate(config, progress=True, workers=workers)
    click.echo(f"Wrote {s.n_images} images in {s.seconds:.1f} s; ground truth: {s.ground_truth}", err=True)


@click.command()
@click.argument("dataset", type=click.Choice(["bbbc006"]))
@click.option("--z", "z_slices", multiple=True, type=int, default=(FOCUS_Z,), show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@handle_errors
def fetch(dataset, z_slices, out):
    """Download BBBC006 z-slice zips from the Broad Bioimage Benchmark Collection (needs internet).

    \b
    Example:
      mae-index fetch bbbc006 --z 16 --out data/bbbc006
    """
    from indexer.bbbc006.download import download_bbbc006

    for path in download_bbbc006(out, tuple(z_slices)):
        click.echo(str(path))
