"""Query an index: embed images with the index's own model and preprocessing, search a store.

The retriever reads the manifest from the store, loads the same model (checked by weights fingerprint)
and the same preprocessing, so a query vector is comparable with the indexed ones by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.bbbc006.constants import VALID_TEXT, is_bbbc006_value
from indexer.core.config import ModelConfig, PreprocessConfig
from indexer.core.errors import ConfigError, DecodeError, IndexMismatchError, StoreUnavailableError
from indexer.core.records import Hit, MetadataFilter
from indexer.images.decode import decode_tiff
from indexer.model.encoder import Encoder, load_encoder
from indexer.model.preprocess import preprocess_image
from indexer.stores.base import VectorStore
from indexer.stores.manifest import diff_manifests, resolve_model_name
from indexer.vectors.normalize import EmbeddingTransform
from indexer.vectors.transform_file import load_transform


@dataclass(frozen=True)
class QueryOptions:
    """How to search: ``k`` results, a metadata filter, an optional cosine-distance bound."""

    k: int = 10
    where: MetadataFilter = MetadataFilter()
    max_distance: float | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.max_distance is not None and not 0.0 <= self.max_distance <= 2.0:
            raise ConfigError(f"max distance is a cosine distance in [0, 2], got {self.max_distance}")


def model_config_from_manifest(
    manifest: dict,
    model_override: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    index_dir: Path | None = None,
) -> ModelConfig:
    """The :class:`ModelConfig` an index was built with (optionally another path to the same weights),
    run on ``device`` at ``precision`` (bf16 and fp32 vectors agree to a cosine of 0.99999).

    The model folder is found from any directory: see :func:`indexer.stores.manifest.resolve_model_name`.
    """
    m = manifest["model"]
    return ModelConfig(
        name=model_override or resolve_model_name(manifest, index_dir),
        revision=m.get("revision"),
        pooling=manifest["pooling"],
        device=device,
        precision=precision,
        compile=compile,
    )


#: Filter fields the query CLI offers, in the order warnings are given.
_CHECKED_FIELDS = ("plate", "well", "site", "channel", "z", "tags")
_OPTION = {"tags": "tag"}
#: Values listed in a warning before "... (N values)".
_LISTED = 12


def filter_warnings(where: MetadataFilter, held: dict[str, list]) -> list[str]:
    """Warnings for filter values the index does not hold (pure).

    Parameters
    ----------
    where
        The query's filter.
    held
        Per field, the distinct values the index holds (:meth:`VectorStore.field_values`).

    Returns
    -------
    list of str
        One line per field with values the index lacks: whether each is a valid BBBC006 value, and the
        values the index holds.
    """
    out = []
    for name in _CHECKED_FIELDS:
        asked = getattr(where, name)
        have = held.get(name, [])
        missing = [v for v in asked if v not in have]
        if not missing:
            continue
        reasons = []
        for v in missing:
            if is_bbbc006_value(name, v) or name in ("plate", "tags"):
                reasons.append(f"{v} is not in the index" if name != "z" else f"z {v} is not in the index")
            else:
                reasons.append(f"{v} is not a BBBC006 {name} ({VALID_TEXT[name]})")
        listed = ", ".join(str(v) for v in have[:_LISTED])
        if len(have) > _LISTED:
            listed += f", ... ({len(have)} values)"
        label = _OPTION.get(name, name)
        holds = f"the index holds {label} {listed}" if have else f"the index holds no {label} values"
        verb = "matches nothing" if len(missing) == len(asked) else "partly matches nothing"
        values = " ".join(str(v) for v in missing)
        out.append(f"--{label} {values} {verb}: {'; '.join(reasons)}; {holds}")
    return out


@dataclass(frozen=True)
class QueryFailure:
    """A query image that could not be used: its path, why, and whether the file was missing or unreadable."""

    path: str
    reason: str
    missing: bool = False


class Retriever:
    """Embeds query images exactly as the index did and searches a :class:`VectorStore`.

    ``encoder`` may be a loaded :class:`Encoder` or a function that loads one: it is then loaded on
    first use, so queries by id (stored vectors) never load a model.
    """

    def __init__(
        self,
        store: VectorStore,
        encoder: Encoder | Callable[[], Encoder],
        preprocess: PreprocessConfig,
        batch_size: int = 16,
        transform: EmbeddingTransform | None = None,
    ):
        self.store = store
        # The index's fitted --normalize transform: every query vector goes through it, as the stored did.
        self.transform = transform
        self._encoder = encoder if isinstance(encoder, Encoder) else None
        self._load = None if isinstance(encoder, Encoder) else encoder
        self.preprocess = preprocess
        self.batch_size = batch_size

    @property
    def encoder(self) -> Encoder:
        """The model, loaded (and checked against the index) on first use."""
        if self._encoder is None:
            self._encoder = self._load()
        return self._encoder

    @classmethod
    def open(
        cls,
        store: VectorStore,
        model_override: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        compile: bool = False,
        index_dir: Path | None = None,
        lazy: bool = False,
    ) -> Retriever:
        """Load the model and preprocessing recorded in ``store``'s manifest; run it on ``device`` at
        ``precision`` (see :class:`ModelConfig`).

        ``index_dir`` (default: the store's own folder, for FAISS) is where a model path recorded relative
        to the index folder starts. With ``lazy`` the model loads at the first image query.

        Raises
        ------
        StoreUnavailableError
            If the store has no manifest (nothing was built into it).
        ModelLoadError
            If the model cannot be found (moved folder: give ``model_override``) or loaded.
        IndexMismatchError
            If ``model_override`` names different weights than the index was built with.
        """
        manifest = store.read_manifest()
        if manifest is None:
            raise StoreUnavailableError(
                "the index is empty (no manifest): build it first with `mae-index build`"
            )
        if index_dir is None:
            index_dir = getattr(store, "directory", None)

        def load() -> Encoder:
            encoder = load_encoder(
                model_config_from_manifest(manifest, model_override, device, precision, compile, index_dir)
            )
            current = {**manifest, "model": encoder.info}
            problems = [p for p in diff_manifests(manifest, current) if p.startswith("model")]
            if problems:
                raise IndexMismatchError(
                    "the model given with --model is not the one the index was built with: "
                    + problems[0]
                    + ". Omit --model to use the index's own, or build a new index with this model."
                )
            return encoder

        where = str(getattr(store, "location", index_dir))
        transform = load_transform(store, manifest, where)
        retriever = cls(store, load, PreprocessConfig.from_dict(manifest["preprocess"]), transform=transform)
        if not lazy:
            retriever.encoder  # noqa: B018 - load now: a server should fail at start, not at its first query
        return retriever

    def embed_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed raw 2-D uint16 images; returns (n, dim) float32 unit vectors."""
        return self.embed_tensors([preprocess_image(im, self.preprocess) for im in images])

    def embed_tensors(self, tensors: Sequence[torch.Tensor]) -> np.ndarray:
        """Embed preprocessed model inputs (3, h, w) in batches; returns (n, dim) float32 unit vectors."""
        out = []
        for start in range(0, len(tensors), self.batch_size):
            chunk = list(tensors[start : start + self.batch_size])
            if len({tuple(t.shape) for t in chunk}) == 1:
                out.append(self.encoder.embed(torch.stack(chunk)))
            else:
                out.extend(self.encoder.embed(t.unsqueeze(0)) for t in chunk)
        if not out:
            return np.empty((0, self.encoder.dim), dtype=np.float32)
        vectors = np.concatenate(out)
        return vectors if self.transform is None else self.transform.apply(vectors)

    def embed_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Read, decode and embed image files.

        Raises
        ------
        ConfigError
            A file does not exist or cannot be read (the message names it).
        DecodeError
            A file is not a usable image (the message names it).
        """
        vectors, failures = self.embed_files_checked(paths)
        if failures:
            bad = failures[0]
            raise (ConfigError if bad.missing else DecodeError)(f"query image {bad.path}: {bad.reason}")
        return vectors

    def embed_files_checked(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[QueryFailure]]:
        """Embed every usable file; return its vectors (in order, usable files only) and the failures."""
        images, failures = [], []
        for p in paths:
            try:
                data = Path(p).read_bytes()
            except OSError as e:
                failures.append(QueryFailure(str(p), f"cannot read: {e.strerror or e}", missing=True))
                continue
            try:
                images.append(decode_tiff(data))
            except DecodeError as e:
                failures.append(QueryFailure(str(p), str(e)))
        return self.embed_arrays(images), failures

    def filter_warnings(self, where: MetadataFilter) -> list[str]:
        """Warnings for values of ``where`` the index does not hold (see :func:`filter_warnings`)."""
        held = {name: self.store.field_values(name) for name in _CHECKED_FIELDS if getattr(where, name)}
        return filter_warnings(where, held)

    def search_vectors(self, vectors: np.ndarray, options: QueryOptions) -> list[list[Hit]]:
        """Search the store with query vectors."""
        return self.store.search(vectors, options.k, options.where, options.max_distance)

    def search_files(self, paths: Sequence[Path], options: QueryOptions) -> list[list[Hit]]:
        """Embed image files and search."""
        return self.search_vectors(self.embed_files(paths), options)

    def search_ids(self, ids: Sequence[int], options: QueryOptions) -> list[list[Hit]]:
        """Search with the stored vectors of indexed images (query by id).

        Raises
        ------
        ConfigError
            If an id is not in the index.
        """
        try:
            vectors = self.store.get_vectors(list(ids))
        except KeyError as e:
            raise ConfigError(
                f"{e.args[0]}; ids are the 'id' field of query results: "
                "`mae-search query IMAGE --index DIR --format json`"
            ) from e
        return self.search_vectors(vectors, options)
