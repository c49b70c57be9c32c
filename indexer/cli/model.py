"""``mae-index init-model`` and ``mae-index pretrain``: make a ViT-MAE to index with."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.cli.options import channels_tuple, handle_errors, setup_logging, source_options, verbose_option
from indexer.core.config import SourceConfig
from indexer.core.errors import ConfigError


@click.command("init-model")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--size", type=click.Choice(["test", "tiny", "small"]), default="tiny", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@handle_errors
def init_model(out, size, seed):
    """Create a randomly initialised ViT-MAE (for tests, or to pretrain from) as a Hugging Face folder.

    \b
    Example:
      mae-index init-model --out runs/mae-tiny --size tiny
    """
    from indexer.model.presets import create_model

    create_model(out, size, seed)
    click.echo(f"Wrote a random-weight ViT-MAE ({size}) to {out}", err=True)


@click.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model folder to write.")
@click.option("--from", "init_from", default=None, help="Continue from a ViT-MAE (hub id or folder).")
@click.option("--config", "size", type=click.Choice(["test", "tiny", "small"]), default=None,
              help="Train from scratch with this architecture (default tiny unless --from).")  # fmt: skip
@click.option("--epochs", default=20, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--steps-per-epoch", default=None, type=int, help="Default: one pass over the training images.")
@click.option("--mask-ratio", default=0.75, show_default=True, type=float)
@click.option("--lr", default=1.5e-4, show_default=True, type=float, help="Base LR per 256 images.")
@click.option("--warmup-epochs", default=2.0, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@source_options
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-resume", is_flag=True, help="Start over even if OUT/checkpoint exists.")
@verbose_option
@handle_errors
def pretrain(data, out, init_from, size, epochs, batch_size, steps_per_epoch, mask_ratio, lr, warmup_epochs,
             seed, channels, z_slices, device, no_resume, verbose):  # fmt: skip
    """MAE-pretrain a ViT-MAE on the images in DATA; write a folder `build --model` loads.

    Resumes from OUT/checkpoint when present (same loss curve as an uninterrupted run).

    \b
    Example:
      mae-index pretrain examples/synthetic --out runs/my-mae --config tiny --epochs 5
    """
    setup_logging(verbose)
    if init_from and size:
        raise ConfigError("give either --from (continue a model) or --config (from scratch), not both")
    from tqdm.auto import tqdm

    from indexer.model.pretrain import PretrainConfig
    from indexer.model.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        sources=SourceConfig(paths=tuple(data), channels=channels_tuple(channels), z=tuple(z_slices)),
        out_dir=out,
        init=init_from or size or "tiny",
        epochs=epochs,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        mask_ratio=mask_ratio,
        lr=lr,
        warmup_epochs=warmup_epochs,
        seed=seed,
        resume=not no_resume,
        device=device,
    )
    bar = tqdm(desc="pretraining", unit="step")

    def tick(p: dict) -> None:
        bar.update(1)
        bar.set_postfix(epoch=p["epoch"], loss=f"{p['loss']:.4f}")

    try:
        log = run_pretrain(config, progress=tick)
    finally:
        bar.close()
    first, last = log["history"][0]["heldout_loss"], log["history"][-1]["heldout_loss"]
    click.echo(f"Held-out loss {first:.4f} -> {last:.4f}; model written to {out}", err=True)
