"""Show what a ViT-MAE reconstructs: masked input, reconstruction and original, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from indexer.core.config import IntensityConfig
from indexer.core.errors import ModelLoadError
from indexer.images.decode import decode_tiff
from indexer.model.preprocess import normalise_intensity


def reconstruct(
    model_dir: str, image_path: Path, out_png: Path, mask_ratio: float = 0.75, seed: int = 0
) -> float:
    """Mask ``mask_ratio`` of the patches of a centre crop, reconstruct them, save a 3-panel PNG.

    Returns the reconstruction loss (norm-pix MSE on masked patches). Needs the decoder weights, i.e. a
    folder written by ``mae-index pretrain`` or a ``ViTMAEForPreTraining`` checkpoint.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from transformers import ViTMAEForPreTraining

    from indexer.model.pretrain import center_crop

    try:
        model = ViTMAEForPreTraining.from_pretrained(
            model_dir, mask_ratio=mask_ratio, use_safetensors=True
        ).eval()
    except OSError as e:
        raise ModelLoadError(f"cannot load a ViT-MAE with its decoder from {model_dir!r}: {e}") from e
    pre_path = Path(model_dir) / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text()) if pre_path.exists() else {}
    mean = torch.tensor(pre.get("image_mean", [0.5] * 3)).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("image_std", [0.5] * 3)).view(1, 3, 1, 1)
    image = decode_tiff(Path(image_path).read_bytes())
    unit = normalise_intensity(torch.from_numpy(image.astype(np.float32))[None], IntensityConfig())[0]
    size = model.config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    crop = center_crop(unit, size)
    x = (crop[None, None].expand(-1, 3, -1, -1) - mean) / std
    p = model.config.patch_size
    n = (size // p) ** 2
    noise = torch.from_numpy(np.random.default_rng(seed).random((1, n))).float()
    with torch.inference_mode():
        out = model(pixel_values=x, noise=noise)
    target = model.patchify(x)
    logits = out.logits
    if model.config.norm_pix_loss:
        # The model predicts per-patch normalised pixels: put each patch's own mean/std back to show it.
        mu = target.mean(-1, keepdim=True)
        sd = (target.var(-1, keepdim=True) + 1e-6).sqrt()
        logits = logits * sd + mu
    mask = out.mask[0].bool()
    recon_patches = torch.where(mask[None, :, None], logits, target)
    recon = model.unpatchify(recon_patches)[0, 0] * std[0, 0] + mean[0, 0]
    masked = model.unpatchify(target * (~mask)[None, :, None])[0, 0] * std[0, 0] + mean[0, 0]
    masked = torch.where(
        model.unpatchify((~mask)[None, :, None].float().expand_as(target))[0, 0] > 0, masked, 0
    )
    panels = [("masked input", masked), ("reconstruction", recon), ("original", crop)]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3), dpi=120)
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(
        f"{Path(image_path).name[:60]}  (mask {mask_ratio:.0%}, loss {float(out.loss):.3f})", fontsize=8
    )
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return float(out.loss)
