"""Small ViT-MAE configurations created locally (tests, offline examples, pretraining from scratch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.core.errors import ConfigError

#: Architectures by name. ``test`` is for unit tests (milliseconds per image); ``tiny`` is the shipped
#: example model's shape; ``small`` is ViT-S/16-like.
PRESETS: dict[str, dict[str, Any]] = {
    "test": dict(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64,
    ),
    "tiny": dict(
        image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
        intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4, decoder_intermediate_size=512,
    ),
    "small": dict(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
        intermediate_size=1536, decoder_hidden_size=256, decoder_num_hidden_layers=4,
        decoder_num_attention_heads=8, decoder_intermediate_size=1024,
    ),
}  # fmt: skip

#: Microscopy images are not ImageNet photos: after percentile scaling they are roughly in [0, 1]
#: with mean ~0.5, so a model trained here uses a neutral mean/std.
NEUTRAL_PREPROCESSOR = {
    "image_processor_type": "ViTImageProcessor",
    "do_normalize": True,
    "do_rescale": False,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def preset_config(size: str, **overrides: Any):
    """Return a ``ViTMAEConfig`` for a preset name."""
    from transformers import ViTMAEConfig

    if size not in PRESETS:
        raise ConfigError(f"unknown model size {size!r}: choose from {', '.join(PRESETS)}")
    return ViTMAEConfig(**{**PRESETS[size], "norm_pix_loss": True, **overrides})


def create_model(out: Path, size: str, seed: int = 0) -> Path:
    """Write a randomly initialised ``ViTMAEForPreTraining`` (safetensors) and its preprocessor config."""
    import json

    import torch
    from transformers import ViTMAEForPreTraining

    config = preset_config(size)
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(config)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(NEUTRAL_PREPROCESSOR, indent=2) + "\n")
    return out
