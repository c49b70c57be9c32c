"""Embedding normalisation fitted on an index: centering, or PCA whitening with a ridge (pure numpy).

Cell-profiling tools "sphere" their features before comparing profiles (pycytominer's ``Spherize``:
centre, eigendecompose the covariance, scale each principal axis by ``1 / sqrt(eigenvalue + epsilon)``).
Here the same is done to the model's unit vectors, fitted once on an index's own (raw) vectors, then
applied to every stored and every query vector, followed by L2 normalisation so that cosine similarity
stays the store's metric. PCA and ZCA whitening differ by a rotation, which cosine does not see, so only
the PCA form is offered.

No I/O here: :mod:`indexer.vectors.transform_file` saves and checks the fitted arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from indexer.core.errors import ConfigError

#: The kinds of ``--normalize``.
KINDS = ("none", "center", "whiten")
#: Ridge added to every covariance eigenvalue before whitening (pycytominer's default epsilon).
DEFAULT_EPS = 1e-6
#: Floor on a transformed vector's norm before L2 normalisation (a vector equal to the mean).
_TINY = 1e-12


@dataclass(frozen=True, eq=False)
class EmbeddingTransform:
    """A fitted transform: ``y = normalise((x - mean) @ matrix)``.

    ``matrix`` is ``None`` for ``center``; for ``whiten`` it is ``(d, d)``: column ``j`` is the ``j``-th
    principal axis divided by ``sqrt(eigenvalue_j + eps)``. ``n_fit`` is the number of vectors fitted on.
    """

    kind: str
    mean: np.ndarray
    matrix: np.ndarray | None
    eps: float
    n_fit: int

    @property
    def dim(self) -> int:
        """The vector dimension this transform takes and returns."""
        return int(self.mean.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Transform ``(n, d)`` vectors; return ``(n, d)`` float32 unit vectors.

        Raises
        ------
        ConfigError
            When ``d`` is not this transform's dimension.
        """
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"the normalisation was fitted on {self.dim}-d vectors, got shape {x.shape}")
        y = x - self.mean
        if self.matrix is not None:
            y = y @ self.matrix
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return (y / np.maximum(norms, _TINY)).astype(np.float32)

    def fingerprint(self) -> str:
        """SHA-256 of the kind, eps and arrays: the manifest records it, so a changed file is refused."""
        h = hashlib.sha256()
        h.update(f"{self.kind}|{self.eps!r}|{self.n_fit}".encode())
        h.update(np.ascontiguousarray(self.mean, dtype=np.float64).tobytes())
        if self.matrix is not None:
            h.update(np.ascontiguousarray(self.matrix, dtype=np.float64).tobytes())
        return h.hexdigest()


def check_kind(kind: str) -> str:
    """Return ``kind`` when it is one of :data:`KINDS`; raise :class:`ConfigError` otherwise."""
    if kind not in KINDS:
        raise ConfigError(f"unknown normalisation {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def fit_transform(vectors: np.ndarray, kind: str, eps: float = DEFAULT_EPS) -> EmbeddingTransform | None:
    """Fit ``kind`` on ``(n, d)`` raw vectors; ``None`` for ``none``.

    ``center`` subtracts the mean. ``whiten`` also rotates to the principal axes of the (n - 1)
    covariance and scales each by ``1 / sqrt(eigenvalue + eps)``: on the fit set the whitened covariance
    is the identity where eigenvalues are much larger than ``eps``, and ``eigenvalue / (eigenvalue + eps)``
    (below 1) where they are not, so directions the fit set hardly spans are not blown up.

    Raises
    ------
    ConfigError
        Unknown kind, a negative eps, or fewer than 2 vectors to fit on.
    """
    check_kind(kind)
    if kind == "none":
        return None
    if eps < 0:
        raise ConfigError(f"the whitening ridge eps must be >= 0, got {eps}")
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(
            f"--normalize {kind} needs at least 2 vectors to fit on, got {x.shape[0] if x.ndim == 2 else 0}"
        )
    mean = x.mean(axis=0)
    matrix = None
    if kind == "whiten":
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)
        eigenvalues, axes = np.linalg.eigh(cov)
        eigenvalues = np.clip(eigenvalues, 0.0, None)  # eigh's rounding can leave -1e-17
        if eps == 0 and np.any(eigenvalues <= 0):
            raise ConfigError(
                f"the fit set ({x.shape[0]} vectors of {x.shape[1]} dimensions) does not span every "
                "direction, so whitening needs a ridge: give eps > 0"
            )
        matrix = axes / np.sqrt(eigenvalues + eps)
    return EmbeddingTransform(kind=kind, mean=mean, matrix=matrix, eps=float(eps), n_fit=int(x.shape[0]))
