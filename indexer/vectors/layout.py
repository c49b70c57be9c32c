"""The embedding map: a 2-D layout of an index's stored vectors, as the seed notebook's t-SNE drew it.

``mae-index map`` computes it once and keeps it in the index folder as ``map.npz``: the ids laid out, their
``x, y`` (scaled into [0, 1]), and the fingerprint of the index's ids when it was made. An index that has
since gained or lost images has another fingerprint, so its map reads as stale (the explorer says so and
still draws the images it has).

Why openTSNE (measured at 52,224 clustered vectors of 192 dimensions, bench/bench_explorer.py's index,
on a shared 2-core machine): t-SNE and UMAP keep each image's neighbours, PCA does not. In both the 10
nearest points of a point were of its own cluster 100 % of the time, in PCA's 2-4 %. openTSNE took 118 s
of CPU on 2 threads and 735 MB at peak; UMAP 70 s of CPU on 1 thread (fixed seed: single-threaded; JIT
compile included) and 950 MB: about the same wall time on 2 idle cores. openTSNE is kept for its lower
peak, its lighter dependencies (no numba/llvmlite) and because the seed notebook's map was a t-SNE.
Above ``max_points`` a seeded sample is laid out: a map of more points than a screen has pixels shows
nothing more.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.core.atomic import atomic_write
from indexer.core.errors import ConfigError, IndexDamagedError
from indexer.core.limits import MAX_INDEX_JSON_BYTES
from indexer.core.safe_files import check_npz_size, read_bounded

MAP_FILE = "map.npz"
#: The most points laid out; more are sampled (seeded). ~2 min of CPU per 50k points.
MAX_POINTS = 100_000
METHOD = "opentsne"


def ids_fingerprint(ids: np.ndarray) -> str:
    """``"COUNT:HASH"`` of a set of ids (order does not matter): what a map or a cached statistic of
    the index was made from."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    return f"{len(ids)}:{hashlib.blake2b(ids.tobytes(), digest_size=10).hexdigest()}"


@dataclass(frozen=True)
class EmbeddingMap:
    """A stored layout: ``ids`` (int64, sorted), ``xy`` (float32, n x 2, within [0, 1]) and what it was
    made from."""

    ids: np.ndarray
    xy: np.ndarray
    fingerprint: str
    method: str
    seconds: float

    def is_stale(self, current_fingerprint: str) -> bool:
        """True where the index's ids have changed since the map was made."""
        return self.fingerprint != current_fingerprint


def sample_ids(ids: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """All of ``ids`` (sorted), or a seeded sample of ``max_points`` of them (sorted)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if len(ids) <= max_points:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, max_points, replace=False))


def layout_2d(vectors: np.ndarray, seed: int = 0, n_jobs: int = -1) -> np.ndarray:
    """2-D t-SNE layout (openTSNE, cosine) of ``vectors``, scaled into [0, 1] on its longer side.

    Raises
    ------
    ConfigError
        openTSNE is not installed (the ``map`` extra).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) < 4:
        xy = np.zeros((len(vectors), 2), dtype=np.float32)  # t-SNE needs a few points; draw them at one spot
    else:
        try:
            from openTSNE import TSNE
        except ImportError as e:
            raise ConfigError("the embedding map needs openTSNE: pip install 'mae-microscopy[map]'") from e
        perplexity = float(min(30, max(1, (len(vectors) - 1) // 3)))
        tsne = TSNE(perplexity=perplexity, metric="cosine", n_jobs=n_jobs, random_state=seed, verbose=False)
        xy = np.asarray(tsne.fit(vectors), dtype=np.float32)
    return scale_unit(xy)


def scale_unit(xy: np.ndarray) -> np.ndarray:
    """``xy`` moved and scaled (one factor for both axes, so distances keep their shape) into [0, 1],
    centred on the shorter axis."""
    xy = np.asarray(xy, dtype=np.float32)
    if not len(xy):
        return xy.reshape(0, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = float((hi - lo).max()) or 1.0
    return ((xy - lo) / span + (1.0 - (hi - lo) / span) / 2).astype(np.float32)


def save_map(directory: Path, emap: EmbeddingMap) -> Path:
    """Write ``emap`` to ``directory/map.npz`` atomically; return its path."""
    path = Path(directory) / MAP_FILE
    buf = io.BytesIO()
    np.savez(buf, ids=emap.ids, xy=emap.xy, fingerprint=emap.fingerprint, method=emap.method,
             seconds=emap.seconds)  # fmt: skip
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
    return path


def load_map(directory: Path) -> EmbeddingMap | None:
    """The map stored in ``directory`` (``None`` where there is none).

    The index folder is untrusted (shared, or copied from elsewhere): the file is read only when it is a
    regular file within :data:`~indexer.core.limits.MAX_INDEX_JSON_BYTES`, its arrays only when they
    unpack within that too (a few KB of deflated zeros may claim gigabytes), and their shapes are checked.

    Raises
    ------
    IndexDamagedError
        ``map.npz`` is a link to a special file, too large, not an ``.npz`` this project wrote, or holds
        arrays of the wrong shapes.
    """
    path = Path(directory) / MAP_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = read_bounded(path)
        check_npz_size(data, MAX_INDEX_JSON_BYTES)
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            emap = EmbeddingMap(ids=f["ids"].astype(np.int64), xy=f["xy"].astype(np.float32),
                                fingerprint=str(f["fingerprint"]), method=str(f["method"]),
                                seconds=float(f["seconds"]))  # fmt: skip
        if emap.ids.ndim != 1 or emap.xy.shape != (len(emap.ids), 2):
            raise ValueError(f"ids of shape {emap.ids.shape} and xy of shape {emap.xy.shape}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexDamagedError(
            f"{path} is damaged ({str(e).splitlines()[0][:200]}): make it again with `mae-index map --index "
            f"{directory}`"
        ) from e
    return emap


def make_map(store, directory: Path, seed: int = 0, max_points: int = MAX_POINTS) -> EmbeddingMap:
    """Lay out the vectors of ``store`` (a :class:`~indexer.stores.base.VectorStore`) and keep the map in
    ``directory``; return it."""
    all_ids = np.asarray(store.ids(), dtype=np.int64)
    if not len(all_ids):
        raise ConfigError(f"the index at {directory} is empty: build it first with `mae-index build`")
    ids = sample_ids(all_ids, max_points, seed)
    t0 = time.perf_counter()
    xy = layout_2d(store.get_vectors(ids), seed)
    emap = EmbeddingMap(ids, xy, ids_fingerprint(all_ids), METHOD, round(time.perf_counter() - t0, 3))
    save_map(directory, emap)
    return emap
