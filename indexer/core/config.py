"""Typed, frozen configuration. Built once at the CLI edge, validated in ``__post_init__``, passed down.

Nothing below the CLI reads environment variables; the index manifest records these values so that a
query embeds images exactly as the index did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from indexer.bbbc006.constants import SATURATION
from indexer.core.errors import ConfigError

DEFAULT_MODEL = "facebook/vit-mae-base"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pooling = Literal["mean", "cls", "iqm"]
Precision = Literal["auto", "fp32", "bf16"]
IntensityMode = Literal["percentile", "fixed", "dataset"]
ResizeMode = Literal["square", "keep-aspect"]


@dataclass(frozen=True)
class IntensityConfig:
    """How pixel intensities become [0, 1] floats.

    Images may be unsigned 8- or 16-bit counts or floats; every window is in the image's own units.

    - ``percentile``: per image, ``low``/``high`` percentiles map to 0/1 (default 1 and 99.8). Scale-free:
      the same picture as 8-bit, 16-bit or float gives the same input. Right for any type.
    - ``fixed``: a fixed ``window`` maps to 0/1. The default 0-4095 is BBBC006's 12-bit range; give
      ``0,255`` for 8-bit images, ``0,65535`` for full-range 16-bit ones, ``0,1`` for floats in [0, 1].
    - ``dataset``: ``low``/``high`` percentiles pooled over a sample of the whole data set give one
      window for every image, so defocused slices are not re-stretched; the build computes the window
      and the manifest stores it, so queries use the same one.
    """

    mode: IntensityMode = "percentile"
    low: float = 1.0
    high: float = 99.8
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("percentile", "fixed", "dataset"):
            raise ConfigError(f"unknown intensity mode {self.mode!r}: use percentile, fixed or dataset")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if self.mode == "fixed" and self.window is None:
            object.__setattr__(self, "window", (0.0, float(SATURATION)))
        if self.window is not None:
            lo, hi = (float(v) for v in self.window)
            if not hi > lo:
                raise ConfigError(f"intensity window must have high > low, got {self.window}")
            object.__setattr__(self, "window", (lo, hi))


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything between a decoded 16-bit image and the model's input tensor.

    ``image_size``/``patch_size``/``image_mean``/``image_std`` come from the model's config; the CLI
    fills them in once the model is known (:func:`indexer.model.encoder.resolve_preprocess`).
    ``resize="square"`` resizes to the model's size; ``"keep-aspect"`` scales the short side to the
    model's size and rounds the long side to whole patches, using ``interpolate_pos_encoding``.
    """

    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    resize: ResizeMode = "square"
    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize not in ("square", "keep-aspect"):
            raise ConfigError(f"unknown resize mode {self.resize!r}: use square or keep-aspect")
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(
                f"image size {self.image_size} is not a multiple of patch size {self.patch_size}"
            )
        object.__setattr__(self, "image_size", (int(h), int(w)))
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (recorded in the manifest)."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        d["intensity"]["window"] = list(self.intensity.window) if self.intensity.window else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        inten = dict(d["intensity"])
        if inten.get("window") is not None:
            inten["window"] = tuple(inten["window"])
        return cls(
            intensity=IntensityConfig(**inten),
            resize=d["resize"],
            image_size=tuple(d["image_size"]),
            patch_size=int(d["patch_size"]),
            image_mean=tuple(d["image_mean"]),
            image_std=tuple(d["image_std"]),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which ViT-MAE to load and how to run and pool it.

    ``name`` is a Hugging Face hub id or a local folder. ``pooling``: ``mean`` of patch tokens (the
    seed's choice), ``cls`` token, or ``iqm`` (per feature, the mean of the patch tokens between that
    feature's 25th and 75th percentile: a robust mean that ignores bright outlier patches).
    ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:n]``. ``precision``: ``fp32``, ``bf16``
    (autocast) or ``auto``: bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX), else fp32. bf16 vectors agree with fp32 to a cosine of 0.99999 and do not depend
    on the batch size. ``compile``: run the model through ``torch.compile`` (a one-off compile cost per
    input shape, then faster batches).
    """

    name: str = DEFAULT_MODEL
    revision: str | None = None
    pooling: Pooling = "mean"
    device: str = "auto"
    precision: Precision = "auto"
    compile: bool = False
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls", "iqm"):
            raise ConfigError(f"unknown pooling {self.pooling!r}: use mean, cls or iqm")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"unknown device {self.device!r}: use auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"unknown precision {self.precision!r}: use auto, fp32 or bf16")


@dataclass(frozen=True)
class RedisConfig:
    """Connection and index settings of the Redis store.

    ``url`` may carry user and password (``redis://user:pass@host:6379/0``, ``rediss://`` for TLS); it
    is never printed. ``algorithm`` FLAT (exact) or HNSW (``m``, ``ef_construction``, ``ef_runtime``);
    ``dtype`` FLOAT32 or FLOAT16 for the stored vectors.
    """

    url: str
    index_name: str = "mae"
    algorithm: Literal["FLAT", "HNSW"] = "FLAT"
    dtype: Literal["FLOAT32", "FLOAT16"] = "FLOAT32"
    m: int = 16
    ef_construction: int = 200
    ef_runtime: int = 800  # recall@10 >= 0.99 on hard clustered data (`python -m bench run redis`)
    socket_timeout: float = 10.0
    retries: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", str(self.algorithm).upper())
        object.__setattr__(self, "dtype", str(self.dtype).upper())
        if self.algorithm not in ("FLAT", "HNSW"):
            raise ConfigError(f"unknown Redis vector algorithm {self.algorithm!r}: use FLAT or HNSW")
        if self.dtype not in ("FLOAT32", "FLOAT16"):
            raise ConfigError(f"unknown Redis vector type {self.dtype!r}: use FLOAT32 or FLOAT16")
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("Redis URL must start with redis://, rediss:// or unix://")
        if not self.index_name or any(c in self.index_name for c in " :{}"):
            raise ConfigError(f"invalid Redis index name {self.index_name!r} (no spaces, ':' or braces)")
        if min(self.m, self.ef_construction, self.ef_runtime) < 1:
            raise ConfigError("HNSW M, EF_CONSTRUCTION and EF_RUNTIME must be positive")

    @property
    def prefix(self) -> str:
        """Key prefix of this index's hashes."""
        return f"{self.index_name}:img:"


@dataclass(frozen=True)
class SourceConfig:
    """Which images to read: folders, zip files or single TIFFs, filtered by channel and z-slice, with
    metadata from their names or from a ``metadata`` table (:mod:`indexer.images.metadata_table`)."""

    paths: tuple[Path, ...]
    channels: tuple[str, ...] = ()  # empty = all
    z: tuple[int, ...] = ()  # empty = all
    metadata: Path | None = None  # a CSV/parquet table: path -> plate, well, site, channel, z, tags

    def __post_init__(self) -> None:
        if not self.paths:
            raise ConfigError("give at least one folder, zip or TIFF file to index")
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))
        if self.metadata is not None:
            object.__setattr__(self, "metadata", Path(self.metadata))


@dataclass(frozen=True)
class NormalizeConfig:
    """``--normalize``: the kind (``None`` = the index's own, or none for a new index), the whitening
    ridge, and the subset to fit on (``("well=A01,A02", "site=1")``: fields of the query filters)."""

    kind: str | None = None
    eps: float | None = None
    fit_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from indexer.vectors.normalize import check_kind

        if self.kind is not None:
            check_kind(self.kind)
        if self.eps is not None and self.eps < 0:
            raise ConfigError(f"--normalize-eps must be >= 0, got {self.eps}")


@dataclass(frozen=True)
class BuildConfig:
    """One ``mae-index build`` run."""

    sources: SourceConfig
    index_dir: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    redis: RedisConfig | None = None
    batch_size: int = 16
    workers: int = 2
    strict: bool = False
    force: bool = False
    flush_every: int = 512  # images between durable FAISS checkpoints
    progress: bool = True
    wait: bool = True  # wait for another writer of the index folder (False: fail at once)
    faiss_index: str | None = None  # FAISS factory string or "auto"; None keeps the folder's (Flat if new)
    faiss_memory: int | None = None  # auto's memory budget for the FAISS index, bytes (default 4 GiB)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    # Decode workers run while the forward runs: None (auto) on a GPU only; on a CPU they take turns
    # with it (indexer.ingest.turns).
    decode_during_forward: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.flush_every < 1:
            raise ConfigError(f"checkpoint interval must be >= 1, got {self.flush_every}")
        object.__setattr__(self, "index_dir", Path(self.index_dir))
        if self.faiss_index is not None and self.faiss_index != "auto":
            from indexer.stores.faiss.kinds import parse_kind

            object.__setattr__(self, "faiss_index", parse_kind(self.faiss_index).factory)
        if self.faiss_memory is not None and self.faiss_memory <= 0:
            raise ConfigError(f"--faiss-memory must be positive, got {self.faiss_memory}")
