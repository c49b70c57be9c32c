"""Which FAISS index the mirror keeps: factory strings, the ``auto`` choice, training and search parameters.

The parquet shards always hold the float32 vectors (the truth); ``index.faiss`` is a search structure
built from them, of one of these kinds (faiss factory strings, inner product over unit vectors):

- ``Flat``: exact search, ``4 * dim`` bytes per vector (the default: the mirror is exact).
- ``HNSW{M}`` (e.g. ``HNSW32``): a graph over the float vectors, ``4 * dim + 8 * M`` bytes per vector;
  searched with ``efSearch``.
- ``IVF{n},Flat`` and ``IVF{n},PQ{m}`` (optionally ``PQ{m}x{bits}``, and an ``OPQ{m}`` rotation in
  front): ``n`` k-means lists, trained on a sample; PQ keeps ``m`` bytes per vector (8-bit codes).
  Searched with ``nprobe``; PQ candidates are re-ranked with float16 vectors kept on disk
  (:mod:`indexer.stores.faiss.rerank`, :mod:`indexer.stores.faiss.rerank_file`), not counted as memory.

:func:`choose_auto` picks one from the number of vectors and a memory budget the way autofaiss
reasons (flat while it is small, a graph while it fits, IVF lists, then the largest PQ code the
budget allows); :func:`tune_search` then picks the smallest ``nprobe``/``efSearch`` that reaches a
recall target against exact search on a sample. Pure functions except where a faiss index is passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.core.errors import ConfigError, StoreUnavailableError

DEFAULT_KIND = "Flat"
#: Recall@10 against exact search that ``auto`` tunes nprobe/efSearch for.
TARGET_RECALL = 0.95
#: Bytes FAISS keeps per vector besides its code: the int64 id.
ID_BYTES = 8
#: IVF kinds also keep a hash-table entry per id (id -> list, offset), so ids can be removed: a
#: ``std::unordered_map`` node with its bucket, measured 39 B per entry in RSS (16 B when serialized).
DIRECT_MAP_BYTES = 40
#: What a direct-map entry takes in ``index.faiss`` (an (id, list-offset) pair).
DIRECT_MAP_DISK_BYTES = 16
#: Bytes per element of the float16 re-rank file PQ kinds keep on disk (indexer.stores.faiss.rerank_file).
RERANK_ITEM_BYTES = 2
#: k-means points per IVF list used for training (FAISS warns below 39; autofaiss uses 30-256).
POINTS_PER_LIST = 64
#: PQ codebooks need 256 centroids per sub-quantizer, trained on at least ~39 points each.
PQ_TRAIN_MIN = 256 * 39
TRAIN_MAX = 200_000
#: Below this many vectors ``auto`` keeps the exact Flat index (an exact scan is milliseconds).
AUTO_FLAT_BELOW = 100_000
#: ``auto`` builds a graph only up to this many vectors (HNSW inserts are slow on a few cores).
AUTO_HNSW_UP_TO = 2_000_000

_KIND_RE = re.compile(
    r"^(?:Flat"
    r"|HNSW(?P<hnsw>\d+)(?:,Flat)?"
    r"|(?:OPQ(?P<opq>\d+)(?:_(?P<opqd>\d+))?,)?IVF(?P<nlist>\d+),(?:Flat|PQ(?P<pq>\d+)(?:x(?P<bits>\d+))?))$"
)
_ALIASES = {"flat": "Flat", "hnsw": "HNSW32"}


@dataclass(frozen=True)
class IndexKind:
    """A parsed FAISS factory string of a kind the store supports."""

    factory: str
    hnsw_m: int | None = None
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int = 8
    opq: bool = False

    @property
    def trained(self) -> bool:
        """True for kinds that learn from a sample before vectors are added (IVF lists, PQ codebooks)."""
        return self.nlist is not None

    @property
    def exact(self) -> bool:
        """True for the exact Flat kind."""
        return self.factory == "Flat"

    @property
    def keeps_floats(self) -> bool:
        """True when the index stores the float vectors themselves (Flat, HNSW, IVF-Flat)."""
        return self.pq_m is None

    @property
    def removes(self) -> bool:
        """True when ids can be removed in place (HNSW graphs cannot: they are rebuilt)."""
        return self.hnsw_m is None

    def bytes_per_vector(self, dim: int) -> float:
        """Estimated memory per vector the index keeps in RAM (code + id + direct-map entry); the
        shared centroids are counted by the caller, the on-disk re-rank file not at all."""
        extra = ID_BYTES + (DIRECT_MAP_BYTES if self.trained else 0)
        if self.pq_m is not None:
            return self.pq_m * self.pq_bits / 8 + extra
        if self.hnsw_m is not None:
            return 4 * dim + 2 * self.hnsw_m * 4 + extra
        return 4 * dim + extra

    def disk_bytes_per_vector(self, dim: int) -> float:
        """Estimated disk per vector besides the parquet shards: ``index.faiss`` (code, id, direct-map
        pair) and, for PQ kinds, the re-rank file's float16 row and id."""
        ram = self.bytes_per_vector(dim)
        if not self.trained:
            return ram
        disk = ram - DIRECT_MAP_BYTES + DIRECT_MAP_DISK_BYTES
        if self.pq_m is not None:
            disk += ID_BYTES + RERANK_ITEM_BYTES * dim
        return disk

    def train_size(self, n: int) -> int:
        """How many vectors to train on (all of them when fewer are stored)."""
        if not self.trained:
            return 0
        want = POINTS_PER_LIST * (self.nlist or 1)
        if self.pq_m is not None:
            want = max(want, PQ_TRAIN_MIN)
        return int(min(n, want, TRAIN_MAX))

    def check(self, dim: int) -> None:
        """Refuse a kind that cannot hold ``dim``-d vectors (PQ sub-vectors must divide the dimension)."""
        if self.pq_m is not None and dim % self.pq_m:
            divisors = [m for m in (8, 16, 32, 48, 64, 96, 128, 192, 256) if dim % m == 0]
            raise ConfigError(
                f"--faiss-index {self.factory}: PQ{self.pq_m} needs a dimension divisible by {self.pq_m}, "
                f"the vectors are {dim}-d; use one of PQ{', PQ'.join(map(str, divisors))}"
            )
        if self.pq_m is not None and self.pq_bits not in (4, 5, 6, 8, 10, 12):
            raise ConfigError(f"--faiss-index {self.factory}: PQ code bits must be 4-12, got {self.pq_bits}")


def parse_kind(text: str) -> IndexKind:
    """Parse ``--faiss-index`` (a factory string, not ``auto``) into an :class:`IndexKind`.

    Raises
    ------
    ConfigError
        Not one of ``Flat``, ``HNSW{M}``, ``IVF{n},Flat``, ``[OPQ{m},]IVF{n},PQ{m}[x{bits}]``.
    """
    text = _ALIASES.get(str(text).strip().lower(), str(text).strip())
    m = _KIND_RE.match(text)
    if m is None:
        raise ConfigError(
            f"unknown FAISS index kind {text!r}: use Flat, HNSW32, IVF{{n}},Flat, IVF{{n}},PQ{{m}} "
            "(e.g. IVF1024,PQ96) or auto"
        )
    g = m.groupdict()
    kind = IndexKind(
        factory=text,
        hnsw_m=int(g["hnsw"]) if g["hnsw"] else None,
        nlist=int(g["nlist"]) if g["nlist"] else None,
        pq_m=int(g["pq"]) if g["pq"] else None,
        pq_bits=int(g["bits"]) if g["bits"] else 8,
        opq=bool(g["opq"]),
    )
    if kind.hnsw_m is not None and not 4 <= kind.hnsw_m <= 128:
        raise ConfigError(f"HNSW M must be 4-128, got {kind.hnsw_m}")
    if kind.nlist is not None and kind.nlist < 1:
        raise ConfigError("IVF needs at least 1 list")
    return kind


def open_kind(stored: str | None, requested: str | None) -> tuple[IndexKind, bool]:
    """The kind a store opens with: ``requested`` (unless ``None`` or ``auto``), else the folder's
    ``stored`` one (Flat when it names none); and whether ``stored`` was a kind this code knows (an
    unknown one opens as Flat, and the caller reports the folder damaged)."""
    try:
        kind, known = parse_kind(stored or DEFAULT_KIND), True
    except ConfigError:
        kind, known = parse_kind(DEFAULT_KIND), False
    if requested not in (None, "auto"):
        kind = parse_kind(requested)
    return kind, known


def ivf_lists(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: a power of two near ``4 * sqrt(n)`` (FAISS's guideline of
    4-16 sqrt(n)), at least 1 and at most ``n / 39`` so every list can be trained."""
    if n < 39:
        return 1
    lists = 2 ** round(math.log2(4 * math.sqrt(n)))
    return int(max(1, min(lists, 2 ** int(math.log2(n // 39)))))


def choose_auto(n: int, dim: int, memory_bytes: int) -> str:
    """The index kind ``auto`` builds for ``n`` ``dim``-d vectors within ``memory_bytes``.

    In order: Flat while ``n`` is small (an exact scan costs milliseconds) and it fits; HNSW32 while
    the graph fits and ``n`` is at most :data:`AUTO_HNSW_UP_TO`; IVF,Flat while the float vectors fit;
    else IVF,PQ with the largest code (bytes per vector) that fits, dividing ``dim``.

    Raises
    ------
    ConfigError
        Not even the smallest PQ code fits the budget.
    """
    if n <= 0:
        return DEFAULT_KIND
    floats = n * (4 * dim + ID_BYTES)
    if n < AUTO_FLAT_BELOW and floats <= memory_bytes:
        return "Flat"
    hnsw = parse_kind("HNSW32")
    if n <= AUTO_HNSW_UP_TO and n * hnsw.bytes_per_vector(dim) <= memory_bytes:
        return "HNSW32"
    lists = ivf_lists(n)
    centroids = lists * dim * 4  # the coarse quantizer, shared by all vectors
    if n * parse_kind(f"IVF{lists},Flat").bytes_per_vector(dim) + centroids <= memory_bytes:
        return f"IVF{lists},Flat"
    for m in (256, 192, 128, 96, 64, 48, 32, 24, 16, 8):
        fits = n * parse_kind(f"IVF{lists},PQ{m}").bytes_per_vector(dim) + centroids <= memory_bytes
        if m < dim and dim % m == 0 and fits:
            return f"IVF{lists},PQ{m}"
    raise ConfigError(
        f"{n} {dim}-d vectors do not fit a FAISS index in {memory_bytes / 2**20:.0f} MiB even at 8 bytes per "
        "vector; raise --faiss-memory"
    )


def parse_memory(text: str) -> int:
    """``--faiss-memory`` (``512M``, ``4G``, ``1.5GB``, plain bytes) in bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text).upper())
    if m is None:
        raise ConfigError(f"--faiss-memory takes a size like 512M or 4G, got {text!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def load_faiss():
    """The ``faiss`` module, or :class:`StoreUnavailableError` saying how to install it."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is a core dependency
        raise StoreUnavailableError("FAISS is not installed: pip install faiss-cpu") from e
    return faiss


def new_index(kind: IndexKind, dim: int) -> Any:
    """An empty FAISS index of ``kind`` (inner product), taking the caller's int64 ids.

    IVF kinds hold ids themselves (with a hash-table direct map, so ids can be removed and vectors
    reconstructed); Flat and HNSW sit in an ``IndexIDMap2``.
    """
    import faiss

    kind.check(dim)
    base = faiss.index_factory(dim, kind.factory, faiss.METRIC_INNER_PRODUCT)
    if kind.trained:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(base))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        if kind.pq_m is not None:
            # Polysemous training orders the codes for Hamming-threshold search, which is not used
            # here; it is most of the training time (48 s of 50 for PQ16 on 3,000 vectors).
            ivf.do_polysemous_training = False
        return base
    return faiss.IndexIDMap2(base)


def search_parameters(
    kind: IndexKind, nprobe: int | None, ef_search: int | None, selector: Any = None, widen: float = 1.0
) -> Any:
    """faiss ``SearchParameters`` for one search: ``nprobe``/``efSearch`` (times ``widen``, for a filter
    that keeps only a fraction of the vectors) and an optional ``IDSelector``.

    Returns ``None`` when there is nothing to set (an exact, unfiltered search).
    """
    import faiss

    if kind.trained:
        nprobe = min(kind.nlist or 1, max(1, math.ceil((nprobe or 1) * widen)))
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if selector is not None:
            params.sel = selector
        if kind.opq:
            return faiss.SearchParametersPreTransform(index_params=params)
        return params
    if kind.hnsw_m is not None:
        ef = max(16, math.ceil((ef_search or 16) * widen))
        params = faiss.SearchParametersHNSW(efSearch=min(ef, 1 << 14))
        if selector is not None:
            params.sel = selector
        return params
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def search_ladder(kind: IndexKind) -> list[tuple[str, int]]:
    """Values :func:`tune_search` tries, cheapest first: ``("nprobe", n)`` or ``("efSearch", ef)``."""
    if kind.trained:
        steps, v = [], 1
        while v < (kind.nlist or 1):
            steps.append(v)
            v *= 2
        return [("nprobe", s) for s in [*steps, kind.nlist or 1]]
    if kind.hnsw_m is not None:
        return [("efSearch", e) for e in (16, 32, 64, 128, 256, 512, 1024, 2048)]
    return []


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int, exclude: np.ndarray | None = None) -> float:
    """Mean over queries of ``|approx[:k] & exact[:k]| / |exact[:k]|`` (negative ids ignored).

    ``exclude`` (one id per query) drops that id from both lists first: a stored vector used as a query
    finds itself at rank 1 in any index, which would flatter the recall of a query that is not stored.
    """
    vals = []
    for row, (a, e) in enumerate(zip(approx, exact)):
        drop = int(exclude[row]) if exclude is not None else None
        truth = [int(x) for x in e if x >= 0 and int(x) != drop][:k]
        if truth:
            found = [int(x) for x in a if x >= 0 and int(x) != drop][:k]
            vals.append(len(set(truth) & set(found)) / len(truth))
    return float(np.mean(vals)) if vals else 1.0


def tune_search(
    index: Any,
    kind: IndexKind,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    k: int = 10,
    target: float = TARGET_RECALL,
    query_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """The cheapest ``nprobe``/``efSearch`` reaching ``target`` recall@k against ``exact_ids``.

    With ``query_ids`` (the queries are stored vectors), each query's own id is left out of both lists,
    and ``exact_ids`` should hold ``k + 1`` columns.

    Returns ``{"nprobe" or "efSearch": value, "recall_at_10": measured}``; the largest value tried
    when none reaches the target (the measured recall says how far it is). Empty for Flat.
    """
    ladder = search_ladder(kind)
    if not ladder or not len(queries):
        return {}
    best: dict[str, Any] = {}
    for name, value in ladder:
        params = search_parameters(
            kind, value if name == "nprobe" else None, value if name == "efSearch" else None
        )
        _, ids = index.search(queries, k + (query_ids is not None), params=params)
        r = recall_at(ids, exact_ids, k, exclude=query_ids)
        best = {name: value, f"recall_at_{k}": round(r, 4)}
        if r >= target:
            break
    return best
