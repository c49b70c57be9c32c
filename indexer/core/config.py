"""Typed, frozen configuration. Built once at the CLI edge, validated in ``__post_init__``, passed down.

Nothing below the CLI reads environment variables; the index manifest records these values so that a
query embeds images exactly as the index did.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from indexer.core.errors import ConfigError
from indexer.core.records import MetadataFilter

DEFAULT_MODEL = "facebook/vit-mae-base"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``--intensity fixed``'s default window: BBBC006's 12-bit range (its camera saturates at 4095,
#: :data:`indexer.bbbc006.constants.SATURATION`; a test checks the two agree).
DEFAULT_FIXED_WINDOW = (0.0, 4095.0)

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
            object.__setattr__(self, "window", DEFAULT_FIXED_WINDOW)
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


#: Fields ``--fit-on`` accepts (those of the query filters; tags as ``tag=key=value``).
FIT_ON_FIELDS = ("plate", "well", "row", "column", "site", "channel", "z", "source", "tag")


def parse_fit_on(specs: Sequence[str]) -> MetadataFilter | None:
    """``--fit-on`` values (``well=A01,A02``, ``site=1``, ``tag=treatment=dmso``) as one filter (AND across
    options, OR among one option's values); ``None`` for none given.

    Raises
    ------
    ConfigError
        A value without ``=``, an unknown field, or a value the field cannot take.
    """
    if not specs:
        return None
    values_of: dict[str, list] = {}
    for spec in specs:
        name, sep, values = str(spec).partition("=")
        name = name.strip().lower()
        if not sep or name not in FIT_ON_FIELDS or not values.strip():
            raise ConfigError(
                f"--fit-on {spec!r}: give FIELD=VALUE[,VALUE...] with FIELD one of {', '.join(FIT_ON_FIELDS)}"
            )
        key = "tags" if name == "tag" else name
        parts = [values.strip()] if key == "tags" else [v.strip() for v in values.split(",") if v.strip()]
        values_of.setdefault(key, []).extend(parts)
    try:
        return MetadataFilter(**{k: tuple(v) for k, v in values_of.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--fit-on {' '.join(specs)}: {e}") from e


def fit_on_text(where: MetadataFilter | None) -> str | None:
    """A ``--fit-on`` filter as the manifest records it: ``FIELD=VALUE[,VALUE]`` items joined by spaces, in
    the filter's field order (an item holding a space is quoted); ``None`` for no filter."""
    if where is None:
        return None
    items = []
    for name in FIT_ON_FIELDS:
        values = getattr(where, "tags" if name == "tag" else name)
        if name == "tag":
            items.extend(f"tag={t}" for t in values)
        elif values:
            items.append(f"{name}={','.join(str(v) for v in values)}")
    return " ".join(shlex.quote(i) if any(c.isspace() for c in i) else i for i in items) or None


def _fit_on_items(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in a tag value recorded before items were quoted
        return text.split()


@dataclass(frozen=True)
class NormalizeSpec:
    """``--normalize``, ``--normalize-eps`` and ``--fit-on``, parsed: the kind (``None`` = the index's own,
    or none for a new index; the CLI checks it against :data:`indexer.vectors.normalize.KINDS`), the
    whitening ridge, and the subset to fit on (a filter of the query filters' fields)."""

    kind: str | None = None
    eps: float | None = None
    fit_on: MetadataFilter | None = None

    def __post_init__(self) -> None:
        if self.eps is not None and self.eps < 0:
            raise ConfigError(f"--normalize-eps must be >= 0, got {self.eps}")
        if self.fit_on is not None and self.fit_on.is_empty:
            object.__setattr__(self, "fit_on", None)

    def to_record(self) -> dict[str, Any]:
        """The manifest's ``normalize`` record of a transform still to fit: ``{"kind": "none"}``, or
        ``{"kind", "eps" (whiten only, else None), "fit_on" (text, or None)}``."""
        if self.kind in (None, "none"):
            return {"kind": "none"}
        return {
            "kind": self.kind,
            "eps": self.eps if self.kind == "whiten" else None,
            # A whitening ridge relative to the spectrum (indexer.vectors.normalize); a record without one
            # was written before it, and its eps is absolute.
            **({"ridge": "relative"} if self.kind == "whiten" else {}),
            "fit_on": fit_on_text(self.fit_on),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NormalizeSpec:
        """The spec a manifest's ``normalize`` record (fitted or not) was made from."""
        text = record.get("fit_on")
        return cls(
            kind=record.get("kind", "none"),
            eps=record.get("eps"),
            fit_on=parse_fit_on(_fit_on_items(text)) if text else None,
        )


@dataclass(frozen=True)
class FaissIndexSpec:
    """``--faiss-index``, parsed by the CLI: a FAISS factory string in its canonical form, or ``auto``
    (``factory`` None: the kind is chosen from the count and the memory budget at the end of a build)."""

    factory: str | None = None

    @property
    def auto(self) -> bool:
        """True for ``auto``."""
        return self.factory is None

    def __str__(self) -> str:
        """The text the FAISS store takes: the factory string, or ``auto``."""
        return self.factory or "auto"


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
    faiss_index: FaissIndexSpec | None = None  # None keeps the folder's (Flat if new)
    faiss_memory: int | None = None  # auto's memory budget for the FAISS index, bytes (default 4 GiB)
    normalize: NormalizeSpec = field(default_factory=NormalizeSpec)
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
        if self.faiss_memory is not None and self.faiss_memory <= 0:
            raise ConfigError(f"--faiss-memory must be positive, got {self.faiss_memory}")
