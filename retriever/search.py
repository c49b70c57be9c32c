"""Query an index: embed images with the index's own model and preprocessing, search a store.

The retriever reads the manifest from the store, loads the same model (checked by weights fingerprint)
and the same preprocessing, so a query vector is comparable with the indexed ones by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.config import ModelConfig, PreprocessConfig
from indexer.decode import decode_tiff
from indexer.encoder import Encoder, load_encoder
from indexer.errors import ConfigError, IndexMismatchError, StoreUnavailableError
from indexer.preprocess import preprocess_image
from indexer.stores.base import Hit, MetadataFilter, VectorStore
from indexer.stores.manifest import diff_manifests


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
) -> ModelConfig:
    """The :class:`ModelConfig` an index was built with (optionally another path to the same weights),
    run on ``device`` at ``precision`` (bf16 and fp32 vectors agree to a cosine of 0.99999)."""
    m = manifest["model"]
    return ModelConfig(
        name=model_override or m["name"],
        revision=m.get("revision"),
        pooling=manifest["pooling"],
        device=device,
        precision=precision,
        compile=compile,
    )


class Retriever:
    """Embeds query images exactly as the index did and searches a :class:`VectorStore`."""

    def __init__(
        self, store: VectorStore, encoder: Encoder, preprocess: PreprocessConfig, batch_size: int = 16
    ):
        self.store = store
        self.encoder = encoder
        self.preprocess = preprocess
        self.batch_size = batch_size

    @classmethod
    def open(
        cls,
        store: VectorStore,
        model_override: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        compile: bool = False,
    ) -> Retriever:
        """Load the model and preprocessing recorded in ``store``'s manifest; run it on ``device`` at
        ``precision`` (see :class:`ModelConfig`).

        Raises
        ------
        StoreUnavailableError
            If the store has no manifest (nothing was built into it).
        IndexMismatchError
            If ``model_override`` names different weights than the index was built with.
        """
        manifest = store.read_manifest()
        if manifest is None:
            raise StoreUnavailableError(
                "the index is empty (no manifest): build it first with `mae-index build`"
            )
        encoder = load_encoder(
            model_config_from_manifest(manifest, model_override, device, precision, compile)
        )
        current = {**manifest, "model": encoder.info}
        problems = [p for p in diff_manifests(manifest, current) if p.startswith("model")]
        if problems:
            raise IndexMismatchError(
                "the model given with --model is not the one the index was built with: "
                + problems[0]
                + ". Omit --model to use the index's own, or build a new index with this model."
            )
        return cls(store, encoder, PreprocessConfig.from_dict(manifest["preprocess"]))

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
        return np.concatenate(out)

    def embed_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Read, decode and embed image files (raises DecodeError for an unusable one)."""
        images = []
        for p in paths:
            try:
                data = Path(p).read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read query image {p}: {e.strerror or e}") from e
            images.append(decode_tiff(data))
        return self.embed_arrays(images)

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
            raise ConfigError(f"{e.args[0]}; list ids with `mae-search query ... --format json`") from e
        return self.search_vectors(vectors, options)
