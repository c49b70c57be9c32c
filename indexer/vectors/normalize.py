"""Embedding normalisation fitted on an index: centering, or PCA whitening with a ridge (pure numpy).

Cell-profiling tools "sphere" their features before comparing profiles (pycytominer's ``Spherize``:
centre, eigendecompose the covariance, scale each principal axis by ``1 / sqrt(eigenvalue + epsilon)``).
Here the same is done to the model's unit vectors, fitted once on an index's own (raw) vectors, then
applied to every stored and every query vector, followed by L2 normalisation so that cosine similarity
stays the store's metric. PCA and ZCA whitening differ by a rotation, which cosine does not see, so only
the PCA form is offered.

The ridge is relative to the spectrum: ``eps`` times the mean eigenvalue of the directions the fit set
spans (``trace / rank``). With more vectors than dimensions that is ``trace / d``, the target Ledoit-Wolf
shrinkage pulls the covariance towards, so a shrinkage ``delta`` is the ridge ``eps = delta / (1 - delta)``
(cosine ignores the overall scale); with fewer, dividing by the rank keeps the ridge at the scale of the
directions actually estimated, where ``trace / d`` would shrink it towards exact whitening. An absolute ridge (the first form,
``1e-6``) sat inside the spectrum of unit vectors, whose eigenvalues are ~1e-3 to ~1e-9, so it whitened a
few directions and shrank the rest. Directions the fit set does not span (eigenvalues below
:data:`SPAN_TOL` of the largest: numerical zeros) get weight 0: a query is projected onto the fitted
directions instead of having its unfitted part multiplied by ``1 / sqrt(eps)``. Transforms fitted with the
absolute ridge (``ridge = "absolute"``, indexes made before) keep working: their matrix is stored.

No I/O here: :mod:`indexer.vectors.transform_file` saves and checks the fitted arrays.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from indexer.core.errors import ConfigError

#: The kinds of ``--normalize``.
KINDS = ("none", "center", "whiten")
log = logging.getLogger(__name__)

#: Ridge added to every covariance eigenvalue before whitening, as a fraction of the mean eigenvalue of
#: the spanned directions. Measured on the quickstart index and the synthetic families (fit sets of 32-35
#: vectors in 192-d), eps 1 beat 0, 0.01 and 0.1 on noise and contrast overlap@10 and on phenotype mAP;
#: 10 is centering in effect. None of them beat ``center`` there, so ``--normalize`` stays ``none``.
DEFAULT_EPS = 1.0
#: How ``eps`` reads: ``relative`` (times the mean eigenvalue) or ``absolute`` (indexes fitted before).
RIDGES = ("relative", "absolute")
#: Eigenvalues below this fraction of the largest are directions the fit set does not span.
SPAN_TOL = 1e-9
#: Floor on a transformed vector's norm before L2 normalisation (a vector equal to the mean).
_TINY = 1e-12


@dataclass(frozen=True, eq=False)
class EmbeddingTransform:
    """A fitted transform: ``y = normalise((x - mean) @ matrix)``.

    ``matrix`` is ``None`` for ``center``; for ``whiten`` it is ``(d, d)``: column ``j`` is the ``j``-th
    principal axis divided by ``sqrt(eigenvalue_j + ridge)`` (0 for an axis the fit set does not span),
    with ``ridge = eps * trace / rank`` (``relative``) or ``eps`` (``absolute``). ``n_fit`` is the number of
    vectors fitted on.
    """

    kind: str
    mean: np.ndarray
    matrix: np.ndarray | None
    eps: float
    n_fit: int
    ridge: str = "relative"

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
        # An absolute-ridge transform hashes as it did before the relative ridge, so old manifests match.
        rule = "" if self.ridge == "absolute" else f"|{self.ridge}"
        h.update(f"{self.kind}|{self.eps!r}|{self.n_fit}{rule}".encode())
        h.update(np.ascontiguousarray(self.mean, dtype=np.float64).tobytes())
        if self.matrix is not None:
            h.update(np.ascontiguousarray(self.matrix, dtype=np.float64).tobytes())
        return h.hexdigest()


def check_kind(kind: str) -> str:
    """Return ``kind`` when it is one of :data:`KINDS`; raise :class:`ConfigError` otherwise."""
    if kind not in KINDS:
        raise ConfigError(f"unknown normalisation {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def fit_warning(n: int, d: int) -> str | None:
    """Why a whitening fitted on ``n`` vectors of ``d`` dimensions is weak, or ``None`` when ``n > d``."""
    if n > d:
        return None
    return (
        f"--normalize whiten fitted on {n} vectors of {d} dimensions: they span at most {n - 1} directions, "
        "and whitening them exactly makes every fitted image equally far from every other. The ridge "
        "(--normalize-eps, a fraction of the mean eigenvalue) keeps them apart; for a trustworthy fit index "
        f"more than {d} images, or use --normalize center."
    )


def fit_transform(
    vectors: np.ndarray, kind: str, eps: float = DEFAULT_EPS, ridge: str = "relative"
) -> EmbeddingTransform | None:
    """Fit ``kind`` on ``(n, d)`` raw vectors; ``None`` for ``none``.

    ``center`` subtracts the mean. ``whiten`` also rotates to the principal axes of the (n - 1)
    covariance and scales each by ``1 / sqrt(eigenvalue + r)``, ``r = eps * trace / rank`` (``relative``)
    or ``eps`` (``absolute``, the rule of indexes fitted before): axes well above ``r`` come out white,
    axes below it are shrunk rather than blown up, and ``eps`` from 0 (exact whitening) to infinity
    (centering) moves between the two. Axes the fit set does not span get weight 0 (relative rule), so
    a query is projected onto the fitted ones. Logs :func:`fit_warning` when ``n <= d``.

    Raises
    ------
    ConfigError
        Unknown kind or ridge rule, a negative eps, fewer than 2 vectors to fit on, or identical vectors.
    """
    check_kind(kind)
    if kind == "none":
        return None
    if eps < 0:
        raise ConfigError(f"the whitening ridge eps must be >= 0, got {eps}")
    if ridge not in RIDGES:
        raise ConfigError(f"unknown ridge rule {ridge!r}: use one of {', '.join(RIDGES)}")
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(
            f"--normalize {kind} needs at least 2 vectors to fit on, got {x.shape[0] if x.ndim == 2 else 0}"
        )
    mean = x.mean(axis=0)
    matrix = None
    if kind == "whiten":
        matrix = _whitening_matrix(x - mean, eps, ridge)
        if (warning := fit_warning(*x.shape)) is not None:
            log.warning(warning)
    return EmbeddingTransform(
        kind=kind, mean=mean, matrix=matrix, eps=float(eps), n_fit=int(x.shape[0]), ridge=ridge
    )


def _whitening_matrix(centred: np.ndarray, eps: float, ridge: str) -> np.ndarray:
    cov = centred.T @ centred / (centred.shape[0] - 1)
    eigenvalues, axes = np.linalg.eigh(cov)
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # eigh's rounding can leave -1e-17
    if ridge == "absolute":
        if eps == 0 and np.any(eigenvalues <= 0):
            raise ConfigError(
                f"the fit set ({centred.shape[0]} vectors of {centred.shape[1]} dimensions) does not span "
                "every direction, so an absolute ridge must be > 0"
            )
        return axes / np.sqrt(eigenvalues + eps)
    top = float(eigenvalues.max())
    if top <= 0:
        raise ConfigError("--normalize whiten: every fit vector is the same, there is nothing to whiten")
    spanned = eigenvalues > SPAN_TOL * top
    r = eps * float(eigenvalues[spanned].mean())
    weights = np.zeros_like(eigenvalues)
    weights[spanned] = 1.0 / np.sqrt(eigenvalues[spanned] + r)
    return axes * weights
