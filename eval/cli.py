"""``mae-eval``: retrieval-robustness evaluation and model inspection. Each command parses options,
builds the config and calls one function."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.cli_common import handle_errors, setup_logging, verbose_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-microscopy")
def main() -> None:
    """Measure how robust retrieval is to noise, blur, defocus and other perturbations."""


@main.command()
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, help="ViT-MAE folder with its decoder (from `mae-index pretrain`).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG to write.")
@click.option("--mask-ratio", default=0.75, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@verbose_option
@handle_errors
def reconstruct(image, model, out, mask_ratio, seed, verbose):
    """Save masked input, reconstruction and original of IMAGE side by side."""
    setup_logging(verbose)
    from eval.reconstruct import reconstruct as run

    loss = run(model, image, out, mask_ratio=mask_ratio, seed=seed)
    click.echo(f"Wrote {out} (masked-patch loss {loss:.4f})", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
