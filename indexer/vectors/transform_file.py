"""Store and check an index's fitted embedding normalisation (:mod:`indexer.vectors.normalize`).

The arrays travel as ``.npz`` bytes: ``normalize.npz`` beside the folder's manifest, and
``<index>:normalize`` beside the Redis manifest. The manifest's ``normalize`` record names the kind, the
ridge, the fit subset, the number of vectors fitted on and the transform's SHA-256 fingerprint, so a
changed or missing file is refused instead of silently giving incomparable vectors.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from indexer.core.errors import IndexMismatchError
from indexer.core.limits import MAX_TRANSFORM_BYTES
from indexer.core.safe_files import check_npz_size
from indexer.vectors.normalize import EmbeddingTransform


def encode_transform(transform: EmbeddingTransform) -> bytes:
    """The ``.npz`` bytes of a fitted transform."""
    arrays = {"mean": transform.mean, "eps": np.float64(transform.eps), "n_fit": np.int64(transform.n_fit)}
    if transform.matrix is not None:
        arrays["matrix"] = transform.matrix
    if transform.ridge != "absolute":  # a file without it is one fitted before the relative ridge
        arrays["ridge"] = np.str_(transform.ridge)
    buf = io.BytesIO()
    np.savez(buf, kind=np.str_(transform.kind), **arrays)
    return buf.getvalue()


def decode_transform(data: bytes) -> EmbeddingTransform:
    """The transform held in ``.npz`` bytes (see :func:`encode_transform`).

    Raises
    ------
    ValueError
        Not an ``.npz``, or its arrays unpack beyond :data:`~indexer.core.limits.MAX_TRANSFORM_BYTES` (a
        few KB of deflated zeros may claim gigabytes; the checksum is of the unpacked arrays, so the size
        is checked first).
    """
    check_npz_size(data, MAX_TRANSFORM_BYTES)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return EmbeddingTransform(
            kind=str(z["kind"]),
            mean=z["mean"].astype(np.float64),
            matrix=z["matrix"].astype(np.float64) if "matrix" in z.files else None,
            eps=float(z["eps"]),
            n_fit=int(z["n_fit"]),
            ridge=str(z["ridge"]) if "ridge" in z.files else "absolute",
        )


def normalize_record(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """A manifest's ``normalize`` record; ``{"kind": "none"}`` for indexes built before it existed."""
    return dict((manifest or {}).get("normalize") or {"kind": "none"})


def describe_normalize(record: dict[str, Any]) -> str:
    """One line for a manifest's ``normalize`` record: ``none``, or the kind, ridge, fit set and fingerprint
    (e.g. ``whiten (eps 1e-06, fitted on all 14 vectors, sha256 0123456789ab)``)."""
    kind = record.get("kind", "none")
    if kind == "none":
        return "none"
    parts = []
    if kind == "whiten" and record.get("eps") is not None:
        relative = record.get("ridge") == "relative"
        parts = [f"eps {record['eps']:g}" + (" x mean eigenvalue" if relative else "")]
    if not record.get("sha256"):
        return f"{kind} ({', '.join(parts + ['not fitted yet: the first build stopped before its fit'])})"
    subset = f"the {record['fit_on']} subset, " if record.get("fit_on") else "all "
    parts += [f"fitted on {subset}{record.get('n_fit')} vectors", f"sha256 {record['sha256'][:12]}"]
    return f"{kind} ({', '.join(parts)})"


def fitted_record(transform: EmbeddingTransform, fit_on: str | None) -> dict[str, Any]:
    """The manifest record of a fitted transform."""
    return {
        "kind": transform.kind,
        "eps": transform.eps,
        **({"ridge": transform.ridge} if transform.kind == "whiten" else {}),
        "fit_on": fit_on,
        "n_fit": transform.n_fit,
        "sha256": transform.fingerprint(),
    }


def load_transform(store, manifest: dict[str, Any] | None, where: str) -> EmbeddingTransform | None:
    """The fitted transform of ``store`` checked against ``manifest``; ``None`` when the index has none
    (``none``, or a first build that has not fitted yet: the record has no ``sha256``).

    Raises
    ------
    IndexMismatchError
        The transform is missing, unreadable, or not the one the manifest recorded.
    """
    record = normalize_record(manifest)
    if record.get("kind", "none") == "none" or not record.get("sha256"):
        return None
    data = store.read_transform()
    if data is None:
        raise IndexMismatchError(
            f"the index at {where} was built with --normalize {record['kind']}, but its fitted transform "
            "(normalize.npz / <index>:normalize) is missing: restore it, or rebuild the index"
        )
    try:
        transform = decode_transform(data)
    except (OSError, ValueError, KeyError) as e:
        raise IndexMismatchError(
            f"the normalisation stored with the index at {where} is unreadable: {e}"
        ) from e
    if transform.fingerprint() != record["sha256"]:
        raise IndexMismatchError(
            f"the normalisation stored with the index at {where} changed since the build (normalize.sha256 "
            f"{record['sha256'][:12]}, the file gives {transform.fingerprint()[:12]}): its vectors would not "
            "be comparable; restore it, or rebuild the index"
        )
    return transform
