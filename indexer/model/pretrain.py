"""MAE pretraining (or continued pretraining) of a ViT-MAE on your own microscopy images.

``ViTMAEForPreTraining`` with ``norm_pix_loss``; AdamW with linear warm-up then cosine decay; random
crops with scale jitter (from native resolution up to the whole field, resized to the model's input),
flips and 90-degree rotations; the same intensity normalisation and mean/std as indexing. Every epoch
ends with a held-out reconstruction loss on fixed crops and fixed masks, and an atomic checkpoint.

Determinism: the batches and masks of epoch ``e`` come from an RNG seeded with ``(seed, e)``, so a run
resumed from the checkpoint of epoch ``e`` continues the very same loss curve.

Output folder::

    model.safetensors, config.json, preprocessor_config.json   load with `mae-index build --model DIR`
    training_log.json       config, per-epoch train/held-out loss, seconds
    loss_curve.png          the curve (when matplotlib is installed)
    checkpoint/             model + optimizer + scheduler state of the last finished epoch (resume)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.core.atomic import atomic_write_json, new_dir_mode
from indexer.core.config import IntensityConfig, SourceConfig
from indexer.core.errors import ConfigError, DecodeError, MaeError, ModelLoadError
from indexer.images.decode import decode_tiff
from indexer.images.sources import iter_sources
from indexer.model.preprocess import normalise_intensity
from indexer.model.presets import NEUTRAL_PREPROCESSOR, PRESETS, preset_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. ``init`` is a preset name (``tiny``, ``small``...) for training from scratch,
    or a hub id / local folder of a ViT-MAE to continue from."""

    sources: SourceConfig
    out_dir: Path
    init: str = "tiny"
    epochs: int = 20
    batch_size: int = 32
    steps_per_epoch: int | None = None  # default: one pass over the training images
    mask_ratio: float = 0.75
    lr: float = 1.5e-4  # base LR per 256 images, scaled by batch_size / 256 (MAE paper)
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    seed: int = 0
    holdout_fraction: float = 0.1
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    max_images: int = 5000  # images are held in memory (0.7 MB each for BBBC006)
    resume: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be >= 1")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 < self.holdout_fraction < 0.5:
            raise ConfigError("holdout fraction must be in (0, 0.5)")
        if self.intensity.mode == "dataset":
            raise ConfigError("pretraining supports percentile or fixed intensity windows")
        object.__setattr__(self, "out_dir", Path(self.out_dir))


def load_images(config: PretrainConfig) -> tuple[list[np.ndarray], list[str]]:
    """Decode up to ``max_images`` images of the sources (sorted), skipping unusable ones."""
    images, paths = [], []
    for item in iter_sources(config.sources):
        if len(images) >= config.max_images:
            break
        try:
            images.append(decode_tiff(item.read()))
            paths.append(item.path)
        except (DecodeError, OSError) as e:
            log.warning("skipping %s: %s", item.path, e)
    if len(images) < 4:
        raise MaeError(f"pretraining needs at least 4 usable images, found {len(images)}")
    return images, paths


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out split of ``n`` items (at least one held out)."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_hold = max(1, int(round(n * fraction)))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def random_crop(unit: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop with scale jitter, resized to ``size``, randomly flipped and rotated.

    The crop side is drawn between ``size`` (native resolution) and the image's short side (the whole
    field's scale, as indexing sees it), so the model learns both scales.
    """
    h, w = unit.shape[-2:]
    side = int(rng.integers(min(size, h, w), min(h, w) + 1))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = unit[..., y : y + side, x : x + side]
    if side != size:
        crop = torch.nn.functional.interpolate(
            crop[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0, 0]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return torch.rot90(crop, int(rng.integers(0, 4)), dims=(-2, -1))


def center_crop(unit: torch.Tensor, size: int) -> torch.Tensor:
    """The whole field's short side around the centre, resized to ``size`` (held-out evaluation)."""
    h, w = unit.shape[-2:]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = unit[..., y : y + side, x : x + side]
    return torch.nn.functional.interpolate(
        crop[None, None], size=(size, size), mode="bilinear", antialias=True
    )[0, 0]


def _to_input(crops: list[torch.Tensor], mean: list[float], std: list[float]) -> torch.Tensor:
    x = torch.stack(crops)[:, None].expand(-1, 3, -1, -1)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def freeze_fixed_embeddings(model) -> None:
    """Keep ViT-MAE's sin-cos position embeddings frozen, as in the MAE paper.

    A fresh model creates them with ``requires_grad=False``, but ``from_pretrained`` returns them
    trainable, so a resumed or continued run would silently start training them.
    """
    model.vit.embeddings.position_embeddings.requires_grad_(False)
    model.decoder.decoder_pos_embed.requires_grad_(False)


def _load_model(config: PretrainConfig):
    from transformers import ViTMAEForPreTraining

    if config.init in PRESETS:
        torch.manual_seed(config.seed)
        return ViTMAEForPreTraining(preset_config(config.init, mask_ratio=config.mask_ratio)), dict(
            NEUTRAL_PREPROCESSOR
        )
    try:
        model = ViTMAEForPreTraining.from_pretrained(
            config.init, mask_ratio=config.mask_ratio, norm_pix_loss=True, use_safetensors=True
        )
    except OSError as e:
        raise ModelLoadError(
            f"cannot load {config.init!r} to continue pretraining (offline or missing); "
            f"use --config {'|'.join(PRESETS)} to start from scratch, or --from a local folder"
        ) from e
    freeze_fixed_embeddings(model)
    pre = dict(NEUTRAL_PREPROCESSOR)
    folder = Path(config.init)
    if (folder / "preprocessor_config.json").exists():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
    else:
        pre.update(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return model, pre


def pretrain(
    config: PretrainConfig, progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) pretraining; write the model folder; return the training log.

    ``progress`` is called after every step with ``{"epoch", "step", "loss"}``.
    """
    from transformers import ViTMAEForPreTraining, get_cosine_schedule_with_warmup

    images, paths = load_images(config)
    train_idx, hold_idx = split_holdout(len(images), config.holdout_fraction, config.seed)
    units = [
        normalise_intensity(torch.from_numpy(im.astype(np.float32))[None], config.intensity)[0]
        for im in images
    ]
    model, pre = _load_model(config)
    size = model.config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean, std = pre["image_mean"], pre["image_std"]
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(train_idx) / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    lr = config.lr * config.batch_size / 256
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.warmup_epochs * steps_per_epoch), total_steps
    )
    device = torch.device(config.device)
    model.to(device)
    n_patches = (size // model.config.patch_size) ** 2
    # Fixed held-out crops and masks: the held-out loss is comparable across epochs and runs.
    hold_x = _to_input([center_crop(units[i], size) for i in hold_idx], mean, std)
    hold_noise = torch.from_numpy(
        np.random.default_rng([config.seed, 99]).random((len(hold_idx), n_patches))
    ).float()

    def held_out_loss() -> float:
        model.eval()
        with torch.inference_mode():
            return float(model(pixel_values=hold_x.to(device), noise=hold_noise.to(device)).loss)

    ckpt = config.out_dir / "checkpoint"
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if config.resume and (ckpt / "state.pt").exists():
        model = ViTMAEForPreTraining.from_pretrained(ckpt, use_safetensors=True).to(device)
        freeze_fixed_embeddings(model)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
        )
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, int(config.warmup_epochs * steps_per_epoch), total_steps
        )
        state = torch.load(ckpt / "state.pt", weights_only=True)  # tensors and numbers only: no pickle code
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = json.loads((ckpt / "history.json").read_text())
        start_epoch = len(history)
        log.info("resuming at epoch %d", start_epoch + 1)
    else:
        history.append({"epoch": 0, "train_loss": None, "heldout_loss": held_out_loss(), "seconds": 0.0})
        start_epoch = 1
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        rng = np.random.default_rng([config.seed, epoch])
        model.train()
        t0 = time.perf_counter()
        losses = []
        for step in range(steps_per_epoch):
            pick = rng.choice(train_idx, size=config.batch_size, replace=len(train_idx) < config.batch_size)
            x = _to_input([random_crop(units[i], size, rng) for i in pick], mean, std).to(device)
            noise = torch.from_numpy(rng.random((len(pick), n_patches))).float().to(device)
            loss = model(pixel_values=x, noise=noise).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if progress:
                progress({"epoch": epoch, "step": step + 1, "loss": losses[-1]})
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "heldout_loss": held_out_loss(),
                "seconds": round(time.perf_counter() - t0, 2),
                "lr": scheduler.get_last_lr()[0],
            }
        )
        _save_checkpoint(model, optimizer, scheduler, history, ckpt)
    model.save_pretrained(config.out_dir, safe_serialization=True)
    (config.out_dir / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    result = {
        "config": _jsonable(asdict(config)),
        "images": {"train": len(train_idx), "heldout": len(hold_idx), "paths_first": paths[:3]},
        "history": history,
        "seconds_this_run": round(time.perf_counter() - t_run, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    atomic_write_json(config.out_dir / "training_log.json", result)
    plot_loss_curve(history, config.out_dir / "loss_curve.png")
    return result


def _save_checkpoint(model, optimizer, scheduler, history, ckpt: Path) -> None:
    import shutil
    import tempfile

    # Write a whole new checkpoint folder, then swap it in: a crash leaves the previous one intact.
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=ckpt.parent))
    tmp.chmod(new_dir_mode())  # mkdtemp makes it 0700; a checkpoint folder is as shareable as any other
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "state.pt")
    (tmp / "history.json").write_text(json.dumps(history))
    old = ckpt.with_name(".checkpoint.old")
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Plot train and held-out loss per epoch to a PNG (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install 'mae-microscopy[eval]'): no loss_curve.png")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    tr = [(h["epoch"], h["train_loss"]) for h in history if h["train_loss"] is not None]
    ho = [(h["epoch"], h["heldout_loss"]) for h in history]
    if tr:
        ax.plot(*zip(*tr), marker=".", label="train (masked patches)")
    ax.plot(*zip(*ho), marker="o", label="held-out (fixed crops and masks)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE loss (norm_pix MSE)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
