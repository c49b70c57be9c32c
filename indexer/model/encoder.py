"""Load a model and turn preprocessed batches into L2-normalised float32 vectors, deterministically.

:class:`Encoder` fixes the invariant steps (eval mode, inference mode, bf16 autocast where the hardware
has native bf16, optional ``torch.compile``, pooling, L2 normalisation, float32 output, dimension and
finiteness checks); a subclass only loads its model and returns token states. :class:`ViTMAEEncoder`
is the ViT-MAE family: a new family is one subclass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from indexer.core.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PreprocessConfig
from indexer.core.errors import ModelLoadError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 matmuls natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        # Pre-Ampere cards (V100, T4) only emulate bf16, which is slower than their fp16/fp32.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Without these instructions oneDNN emulates bf16, which is slower than fp32. They count only where
        # torch runs its kernels at AVX512: one capped at AVX2 (ATEN_CPU_CAPABILITY, with oneDNN's
        # ONEDNN_MAX_CPU_ISA beside it) would emulate bf16 on a chip that has it.
        if torch.backends.cpu.get_cpu_capability() != "AVX512":
            return False
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


#: On a CPU, ``auto`` takes bf16 only for models at least this wide (hidden size). oneDNN's bf16 kernels
#: win on large matmuls and lose on small ones, where the casts around each layer cost more than the
#: narrower multiply saves: on a 2-core AVX512-BF16 CPU, ViT-S (384) ran 1.5x faster in bf16 and the
#: shipped tiny model (192) 1.7-3x slower (`python -m bench run forward`; docs/performance).
CPU_BF16_MIN_HIDDEN = 384


def resolve_precision(
    device: torch.device, precision: str, hidden_size: int | None = None
) -> tuple[str, str]:
    """Return ``(precision, why)``: ``fp32``/``bf16`` as asked, or what ``auto`` picks and the rule that
    picked it.

    ``auto`` is bf16 on a GPU with native bf16; on a CPU with native bf16 (:func:`native_bf16`) only for
    models whose ``hidden_size`` is at least :data:`CPU_BF16_MIN_HIDDEN` (unknown: treated as large);
    fp32 everywhere else.
    """
    if precision != "auto":
        return precision, "as asked"
    if not native_bf16(device):
        return "fp32", f"auto: no native bf16 on {device.type}"
    if device.type == "cpu" and hidden_size is not None and hidden_size < CPU_BF16_MIN_HIDDEN:
        return "fp32", (
            f"auto: hidden size {hidden_size} < {CPU_BF16_MIN_HIDDEN}, bf16 is slower than fp32 on a CPU for "
            "a model this small"
        )
    return "bf16", f"auto: native bf16 on {device.type}"


def pool_tokens(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states (B, 1 + N, D), CLS first, into (B, D).

    ``mean``: mean of the N patch tokens. ``cls``: the CLS token. ``iqm``: per feature, the mean of the
    patch tokens whose value lies between that feature's 25th and 75th percentile over the patches
    (inclusive), i.e. the interquartile mean; robust to a few saturated or empty patches.
    """
    if pooling == "cls":
        return tokens[:, 0]
    patches = tokens[:, 1:]
    if pooling == "mean":
        return patches.mean(dim=1)
    if pooling == "iqm":
        q = torch.tensor([0.25, 0.75], dtype=patches.dtype, device=patches.device)
        q1, q3 = torch.quantile(patches, q, dim=1, keepdim=True)  # each (B, 1, D)
        keep = (patches >= q1) & (patches <= q3)
        return (patches * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
    raise ValueError(f"unknown pooling {pooling!r}")


class Encoder(ABC):
    """Base class: a loaded model that maps model input (B, 3, h, w) to unit vectors (B, dim)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        # A subclass that knows its model's width resolves ``auto`` again once loaded (:meth:`_set_precision`).
        self.precision, self.precision_reason = resolve_precision(self.device, config.precision)
        self._pad_to = 0

    def _set_precision(self, hidden_size: int) -> None:
        self.precision, self.precision_reason = resolve_precision(
            self.device, self.config.precision, hidden_size
        )

    @property
    def runtime(self) -> str:
        """Where and how the model runs, with the rule behind an ``auto`` precision (for summaries)."""
        text = f"{self.device.type} {self.precision}"
        return text if self.precision_reason == "as asked" else f"{text} ({self.precision_reason})"

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output dimension."""

    @property
    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Identity of the loaded weights for the manifest: name, revision, fingerprint, family; and the
        precision the vectors are computed at (provenance only: bf16 and fp32 vectors are comparable)."""

    @abstractmethod
    def default_preprocess(self) -> PreprocessConfig:
        """The preprocessing this model expects (input size, patch size, mean/std)."""

    @abstractmethod
    def _tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the model; return token states (B, 1 + N, D) with the CLS token first."""

    def _autocast(self):
        # Measured on a 2-core AVX512-BF16 CPU: ViT-B/16 forward 214 -> 113 ms/image, cosine to fp32 0.99999.
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed batch; return (B, dim) float32 L2-normalised vectors.

        Raises
        ------
        ValueError
            If the output has the wrong dimension or is not finite.
        """
        n = pixel_values.shape[0]
        if self.config.compile:
            # A compiled graph is specialised to its batch shape: pad a short last batch to the largest
            # batch seen rather than compile again (rows do not interact, so the padding changes nothing).
            self._pad_to = max(self._pad_to, n)
            if n < self._pad_to:
                pad = pixel_values.new_zeros((self._pad_to - n, *pixel_values.shape[1:]))
                pixel_values = torch.cat([pixel_values, pad])
        with torch.inference_mode(), self._autocast():
            x = pixel_values.to(self.device, non_blocking=True)
            tokens = self._tokens(x)[:n]
            pooled = pool_tokens(tokens.float(), self.config.pooling)
            vectors = F.normalize(pooled, dim=-1)
        out = vectors.float().cpu().numpy()
        if out.shape != (n, self.dim):
            raise ValueError(f"encoder returned shape {out.shape}, expected ({n}, {self.dim})")
        if not np.isfinite(out).all():
            raise ValueError("encoder produced non-finite values")
        return out


def _offline_hint(name: str) -> str:
    return (
        f"cannot load model {name!r}: it is not a local folder and could not be fetched from the Hugging Face "
        "hub (offline, or not in the local cache). Pass --model PATH to a local ViT-MAE folder "
        "(e.g. --model examples/models/mae-tiny-bbbc006), or connect once to download it."
    )


def _check_hub_id(name: str) -> None:
    """Refuse a name that is neither an existing folder nor a possible hub id (e.g. a relative path
    given from another directory), instead of the hub client's validation traceback."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise ModelLoadError(
            f"model {name!r} is not a folder (looked from {Path.cwd()}) nor a Hugging Face hub id: "
            "give the model folder's path with --model PATH"
        ) from e


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face endpoint accepts a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(name: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(name, "config.json", revision=revision)
    return isinstance(hit, str)


def weights_fingerprint(folder: Path) -> str:
    """SHA-256 over a model folder's ``config.json`` and ``*.safetensors`` files (sorted by name)."""
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    for p in [folder / "config.json", *files]:
        if p.exists():
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


#: Checkpoint tensors a ViT-MAE encoder does not use: the pretraining decoder.
_UNUSED_PREFIXES = ("decoder.",)


def _raise_load_error(name: str, e: Exception) -> None:
    if isinstance(e, OSError):
        if Path(name).exists():
            raise ModelLoadError(
                f"cannot load model from folder {name!r}: {str(e).splitlines()[0]} "
                "(a ViT-MAE folder needs config.json and model.safetensors)"
            ) from e
        raise ModelLoadError(_offline_hint(name)) from e
    raise ModelLoadError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from e


def _names(keys: list) -> str:
    keys = [k if isinstance(k, str) else str(k[0]) for k in keys]
    shown = ", ".join(sorted(keys)[:8])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 8 else ''})"


def _check_loading_info(name: str, loading: dict[str, list]) -> None:
    """Refuse a checkpoint that does not fill the model exactly: a missing tensor would be left at its
    random initial value (different in every process), an unexpected one silently dropped.

    Raises
    ------
    ModelLoadError
        Listing the missing, unexpected (other than the pretraining decoder) and mismatched tensors.
    """
    missing = list(loading.get("missing_keys", []))
    unexpected = [k for k in loading.get("unexpected_keys", []) if not str(k).startswith(_UNUSED_PREFIXES)]
    mismatched = list(loading.get("mismatched_keys", []))
    errors = [str(e).splitlines()[0] for e in loading.get("error_msgs", []) if str(e).strip()]
    parts = []
    if missing:
        parts.append(f"missing from the weights: {_names(missing)}")
    if unexpected:
        parts.append(f"in the weights but not in config.json's model: {_names(unexpected)}")
    if mismatched:
        parts.append(f"of another shape than config.json says: {_names(mismatched)}")
    if errors:
        parts.append(f"errors: {'; '.join(errors[:3])}")
    if parts:
        raise ModelLoadError(
            f"model {name!r} does not match its config.json, so some layers would be random: "
            + "; ".join(parts)
            + ". Use the config.json saved with these weights (num_hidden_layers, hidden_size, ...)"
        )


class ViTMAEEncoder(Encoder):
    """Any ViT-MAE checkpoint (hub id or local folder), run without masking and without shuffling.

    The stock model masks 75 % of patches at random and shuffles the rest. Here ``mask_ratio`` is 0 and
    ``noise`` is the identity ramp, so every patch is kept in order and the output is deterministic.
    Only safetensors weights are loaded (no pickle).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        from transformers import ViTMAEModel

        local_only = config.local_files_only
        if not Path(config.name).exists():
            _check_hub_id(config.name)
        if not Path(config.name).exists() and not local_only:
            # Without this, an offline machine spends ~20 s in the hub client's retries before failing.
            if _hub_cached(config.name, config.revision):
                local_only = not _hub_reachable()
            elif not _hub_reachable():
                raise ModelLoadError(_offline_hint(config.name))
        try:
            model, loading = ViTMAEModel.from_pretrained(
                config.name,
                revision=config.revision,
                mask_ratio=0.0,
                use_safetensors=True,
                local_files_only=local_only,
                output_loading_info=True,
            )
        except Exception as e:
            if type(e).__name__ == "SafetensorError" or "ignore_mismatched_sizes" in str(e):
                # A truncated or empty file, or tensors of other shapes than the config says.
                raise ModelLoadError(
                    f"cannot load model {config.name!r}: its weights do not fit "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the safetensors file is damaged or "
                    "does not belong to this config.json"
                ) from None
            if not isinstance(e, (OSError, ValueError)):
                raise
            _raise_load_error(config.name, e)
        _check_loading_info(config.name, loading)
        if getattr(model.config, "model_type", None) != "vit_mae":
            raise ModelLoadError(f"{config.name!r} is a {model.config.model_type!r} model, not a ViT-MAE")
        self.model = model.to(self.device).eval()
        self._set_precision(int(model.config.hidden_size))
        self._forward = self.model
        if config.compile:
            # On a CPU, inductor's freezing folds the weights into the graph as constants, so oneDNN gets
            # them pre-packed: ViT-S fp32 batch 16, 16.3 -> 17.5 images/s (`python -m bench run forward`). The
            # weights are never trained here, and a frozen graph is only ever run under inference_mode.
            options = {"freezing": True} if self.device.type == "cpu" else None
            self._forward = torch.compile(self.model, options=options)
        self._cfg = model.config
        self._preprocessor = self._read_preprocessor_config()

    def _read_preprocessor_config(self) -> dict[str, Any]:
        from transformers.utils import cached_file

        try:
            path = cached_file(
                self.config.name,
                "preprocessor_config.json",
                revision=self.config.revision,
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
            )
        except OSError:
            path = None
        if not path:
            return {}
        return json.loads(Path(path).read_text())

    @property
    def dim(self) -> int:
        """Hidden size of the encoder."""
        return int(self._cfg.hidden_size)

    @property
    def info(self) -> dict[str, Any]:
        """Name, revision, weights fingerprint and family, for the manifest."""
        local = Path(self.config.name)
        if local.is_dir():
            fingerprint = weights_fingerprint(local)
        else:
            fingerprint = getattr(self._cfg, "_commit_hash", None)
        return {
            "name": self.config.name,
            "revision": self.config.revision,
            "fingerprint": fingerprint,
            "family": "vit_mae",
            "precision": self.precision,
        }

    def default_preprocess(self) -> PreprocessConfig:
        """Input size and patch size from the model config; mean/std from its preprocessor config."""
        size = self._cfg.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        patch = self._cfg.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return PreprocessConfig(
            image_size=size,
            patch_size=int(patch),
            image_mean=tuple(self._preprocessor.get("image_mean", IMAGENET_MEAN)),
            image_std=tuple(self._preprocessor.get("image_std", IMAGENET_STD)),
        )

    def _tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        n = (h // self.model.config.patch_size) * (w // self.model.config.patch_size)
        # Identity noise: argsort keeps patch order, so no shuffling and no randomness.
        noise = torch.arange(n, device=pixel_values.device, dtype=torch.float32).expand(b, n)
        interpolate = (h, w) != tuple(self.default_preprocess().image_size)
        out = self._forward(pixel_values=pixel_values, noise=noise, interpolate_pos_encoding=interpolate)
        return out.last_hidden_state


def load_encoder(config: ModelConfig) -> Encoder:
    """Load the encoder named by ``config`` (ViT-MAE is the one family so far)."""
    return ViTMAEEncoder(config)


def resolve_preprocess(encoder: Encoder, requested: PreprocessConfig) -> PreprocessConfig:
    """Fill the model-given fields (size, patch, mean/std) of ``requested`` from the encoder."""
    d = encoder.default_preprocess()
    return replace(
        requested,
        image_size=d.image_size,
        patch_size=d.patch_size,
        image_mean=d.image_mean,
        image_std=d.image_std,
    )
