"""The re-rank file beside a PQ ``index.faiss``: float16 copies of the vectors, read by row from disk.

Layout of ``index.rerank`` (little-endian)::

    header   64 bytes: magic b"MAERRNK1", n (int64), dim (int64), then the name of the last shard
             it was derived from (ASCII, NUL-padded, 40 bytes)
    ids      n int64, sorted ascending
    vectors  n x dim float16, row i holding the vector of ids[i]

Both arrays are memory-mapped: a query looks its candidates' ids up by binary search (about
``log2 n`` pages) and reads only their rows, so the process keeps none of it in its own memory (the
page cache may, and gives it back under pressure). Like ``index.faiss`` it is derived from the parquet
shards, written atomically, one shard at a time, and rebuilt whenever it does not match them.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.atomic import atomic_write, file_sha256

RERANK = "index.rerank"
MAGIC = b"MAERRNK1"
HEADER = 64
_NAME_BYTES = HEADER - 24
_DTYPE = np.float16


def file_bytes(n: int, dim: int) -> int:
    """Size of a re-rank file of ``n`` ``dim``-d vectors."""
    return HEADER + n * 8 + n * dim * np.dtype(_DTYPE).itemsize


def read_header(path: Path) -> tuple[int, int, str] | None:
    """``(n, dim, last_shard)`` of a re-rank file, or ``None`` when it is missing, not one, or its size
    does not match its header (truncated)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER)
        size = Path(path).stat().st_size
    except OSError:
        return None
    if len(head) != HEADER or head[:8] != MAGIC:
        return None
    n, dim = struct.unpack("<qq", head[8:24])
    if n < 0 or dim < 1 or size != file_bytes(n, dim):
        return None
    return n, dim, head[24:].rstrip(b"\0").decode("ascii", "replace")


class RerankFile:
    """An open re-rank file: exact-enough inner products of queries with stored vectors by id."""

    def __init__(self, path: Path) -> None:
        header = read_header(path)
        if header is None:
            raise ValueError(f"{path} is not a complete re-rank file")
        self.path = Path(path)
        self.n, self.dim, self.last_shard = header
        self._ids = np.memmap(path, dtype="<i8", mode="r", offset=HEADER, shape=(self.n,)) if self.n else None
        self._vectors = (
            np.memmap(path, dtype=_DTYPE, mode="r", offset=HEADER + 8 * self.n, shape=(self.n, self.dim))
            if self.n
            else None
        )

    @classmethod
    def write(
        cls,
        path: Path,
        ids: np.ndarray,
        dim: int,
        parts: Iterable[tuple[np.ndarray, np.ndarray]],
        last_shard: str,
    ) -> RerankFile:
        """Write the file for the sorted unique ``ids`` from ``parts`` (``(ids, float32 vectors)``, one
        shard at a time; every id exactly once over all parts), atomically; return it opened.

        Memory: one part at a time; the rows go straight to the memory-mapped file.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(ids)
        name = last_shard.encode("ascii")[:_NAME_BYTES]

        def fill(p: Path) -> None:
            with open(p, "wb") as f:
                f.write(MAGIC + struct.pack("<qq", n, dim) + name.ljust(_NAME_BYTES, b"\0"))
                f.truncate(file_bytes(n, dim))
            if not n:
                return
            out_ids = np.memmap(p, dtype="<i8", mode="r+", offset=HEADER, shape=(n,))
            out_ids[:] = ids
            out_ids.flush()
            del out_ids
            vectors = np.memmap(p, dtype=_DTYPE, mode="r+", offset=HEADER + 8 * n, shape=(n, dim))
            seen = 0
            for part_ids, part_vectors in parts:
                pos = np.searchsorted(ids, part_ids)
                if len(pos) and (pos.max() >= n or not np.array_equal(ids[pos], part_ids)):
                    raise ValueError("a shard holds an id the re-rank file was not sized for")
                order = np.argsort(pos)  # ascending rows: the writes sweep the file forwards
                vectors[pos[order]] = part_vectors[order].astype(_DTYPE)
                seen += len(pos)
            if seen != n:
                raise ValueError(f"the shards gave {seen} vectors for {n} ids")
            vectors.flush()
            del vectors

        atomic_write(path, fill)
        return cls(path)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in the file (binary search in the memory-mapped id column).

        Raises
        ------
        KeyError
            An id is not in the file (it does not match the index: rebuild it).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        if self._ids is None:
            raise KeyError(f"id {int(ids[0])} is not in {self.path}")
        pos = np.searchsorted(self._ids, ids)
        bad = pos >= self.n
        bad[~bad] = self._ids[pos[~bad]] != ids[~bad]
        if bad.any():
            raise KeyError(f"id {int(ids[bad][0])} is not in {self.path}")
        return pos

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` as float32 (float16 precision)."""
        pos = self.rows(ids)
        if not len(pos):
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort(pos)
        out = np.empty((len(pos), self.dim), dtype=np.float32)
        out[order] = self._vectors[pos[order]]  # read in file order
        return out

    def scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Inner products of each query with its candidate ``ids`` ((nq, c), -1 for none: score -inf)."""
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        for row, (q, cand) in enumerate(zip(queries, ids)):
            valid = cand >= 0
            if valid.any():
                out[row, valid] = self.vectors(cand[valid]) @ np.asarray(q, dtype=np.float32)
        return out


class RerankKeeper:
    """A FAISS folder's re-rank file, kept in step with its search index.

    The folder's ``index.rerank`` is used when it matches the snapshot the state file describes (its
    header's count and last shard, its size); otherwise it is rebuilt from the shards: into the folder
    by a writer, into a private temporary folder by a reader (which may not write the index folder).
    """

    def __init__(self, directory: Path | None, writable: bool) -> None:
        # No folder (an index built from arrays): every file is a private temporary one.
        self.directory = Path(directory) if directory is not None else None
        self.writable = writable and directory is not None
        self._file: RerankFile | None = None
        self._sha: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def path(self) -> Path | None:
        """The folder's re-rank file (``None`` without a folder)."""
        return self.directory / RERANK if self.directory is not None else None

    @property
    def current(self) -> RerankFile | None:
        """The re-rank file matching the index, or ``None`` (to be rebuilt)."""
        return self._file

    def invalidate(self) -> None:
        """The index changed: the file no longer matches it."""
        self._file, self._sha = None, None

    def adopt(self, entry: dict | None, count: int, dim: int, last_shard: str) -> bool:
        """Use the folder's file if it matches the snapshot (``entry``: the state file's record of it);
        return whether it did."""
        self.invalidate()
        if self.path is None:
            return False
        header = read_header(self.path)
        if not entry or header != (count, dim, last_shard) or self.path.stat().st_size != entry.get("bytes"):
            return False
        self._file, self._sha = RerankFile(self.path), entry.get("sha256")
        return True

    def build(
        self, ids: np.ndarray, dim: int, parts: Iterable[tuple[np.ndarray, np.ndarray]], last_shard: str
    ) -> RerankFile:
        """Write a new file from the shards (``parts``) and use it."""
        path = self.path
        if not self.writable or path is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="mae-rerank-")
            path = Path(self._tmp.name) / RERANK
        self._file, self._sha = RerankFile.write(path, ids, dim, parts, last_shard), None
        return self._file

    def state_entry(self) -> dict[str, Any]:
        """What the state file records of the folder's file: size and SHA-256 (computed once)."""
        if self._file is None or self.path is None or self._file.path != self.path:
            return {}
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return {"bytes": self.path.stat().st_size, "sha256": self._sha, "rows": self._file.n}

    def problems(self, entry: dict | None) -> list[str]:
        """The folder's file against the state file's record (a full check: reads the whole file)."""
        if not entry or not entry.get("sha256") or self.path is None:
            return []
        if not self.path.exists():
            return [f"{RERANK} is missing (it is rebuilt from the shards by the next writer)"]
        if file_sha256(self.path) != entry["sha256"]:
            return [
                f"{RERANK} does not match its recorded SHA-256 (changed since written); `mae-index repair` "
                "or any writer rebuilds it from the shards"
            ]
        return []

    def drop(self) -> None:
        """The index kind keeps no re-rank file: remove the folder's."""
        self.invalidate()
        if self.writable:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove a reader's temporary copy."""
        self.invalidate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
