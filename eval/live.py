"""Live robustness for the web explorer: one query, one perturbation, one severity, on demand.

This module plugs into ``mae-search serve`` from above: imports run ``eval -> retriever -> indexer``,
so the retriever cannot import the perturbations or the metrics. Instead the server's application
takes extra routes (:meth:`retriever.http.app.App.add`), and the ``eval`` package offers
:func:`register` under the entry-point group ``mae_microscopy.serve`` (pyproject.toml), which
``mae-search serve`` loads. Without the eval package (or its extra) the page simply has no
robustness panel.

The numbers are computed by :func:`compare_one`, which runs the very steps of
:func:`eval.robustness.run_robustness` for one query: the raw image from the indexed path, the
seeded perturbation, an unfiltered search deep enough, the top k of each once the query's relatives
named by ``exclude`` are cut out of both (:mod:`eval.gallery`; default ``site``, as ``mae-eval``'s; found
by the explorer's catalog in the size of the query's group, :func:`eval.gallery.exclusions_from`), then
:func:`eval.robustness.compare_results`. So they equal ``mae-eval robustness --exclude <the same>`` for
the same query, perturbation, severity, k, seed and RBO p, with each metric's chance level
(:mod:`eval.chance`) for the gallery left. ``defocus_z`` is offered where the index holds images at more
than one z: the query's own field of view ``severity`` slices away stands in for the perturbed query.
"""

from __future__ import annotations

import base64
import math
from http import HTTPStatus
from typing import Any

import numpy as np

from eval import chance, gallery, perturb
from eval.robustness import NATURAL, RobustnessConfig, _ids, compare_results
from indexer.bbbc006.constants import FOCUS_Z
from indexer.core.errors import ConfigError
from indexer.core.records import Hit, ImageRecord
from indexer.images.sources import load_image
from retriever import render
from retriever.catalog import GROUP_KEYS, Catalog
from retriever.search import QueryOptions, Retriever


def compare_one(
    retriever: Retriever,
    record: ImageRecord,
    name: str,
    severity: int,
    k: int,
    seed: int,
    rbo_p: float,
    excluded: frozenset[int] = frozenset(),
    n_index: int | None = None,
    partner: ImageRecord | None = None,
    compute: Any = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """Clean vs perturbed top-k of one indexed image, with the metrics of ``mae-eval robustness``.

    ``excluded``: the ids that leave both lists (the query's relatives, :func:`eval.gallery.exclusions`;
    empty: ``--exclude none``); ``n_index``: the index's size (default: the store's count). For
    ``defocus_z``, ``partner`` is the same field of view at another z (:func:`defocus_partner`): its
    stored vector is the perturbed query and it leaves both lists, as in ``mae-eval``.
    ``compute`` runs the model and index work (``compute(fn, *args)``, the server's compute thread); reading
    and perturbing the image run on the calling thread, so a large image does not hold up other queries.
    ``max_pixels`` refuses a larger source image (:class:`~indexer.core.errors.ConfigError`).

    Returns
    -------
    dict
        ``clean`` and ``perturbed`` hit lists (k each, ranked 1..k once ``excluded`` is out, each hit with
        the score of its own list's query), ``metrics`` (self_rank, self_at_1, overlap_at_k,
        jaccard_at_k, rbo, kendall_tau), ``chance`` (each metric's chance level, :mod:`eval.chance`),
        ``candidates`` (the gallery left), ``value`` (the severity's parameter) and the perturbed raw
        image (``image``, a uint16 array).

    Raises
    ------
    ConfigError
        Fewer than ``k + 1`` candidates are left once ``excluded`` is out (as ``mae-eval`` skips it), or
        ``defocus_z`` without a ``partner``.
    """
    RobustnessConfig(perturbations=(name,), severities=(severity,), k=k, seed=seed, rbo_p=rbo_p)
    n_index = retriever.store.count() if n_index is None else n_index
    natural = name == NATURAL
    if natural and partner is None:
        raise ConfigError(f"defocus_z needs the same field of view at another z for image {record.id}")
    drop = excluded | ({partner.id} if natural else set())
    candidates = n_index - len(drop)
    if candidates < k + 1:
        raise ConfigError(
            f"image {record.id} has {candidates} candidates once its relatives are excluded, fewer than "
            f"k + 1 = {k + 1}: lower k, or choose a milder exclude"
        )
    raw = load_image(record.path, record.id)  # as eval.queries.read_queries reads it
    if max_pixels is not None and raw.size > max_pixels:
        raise ConfigError(
            f"image {record.id} has {raw.size / 2**20:.1f} M pixels; the live panel perturbs images of at "
            f"most {max_pixels / 2**20:.0f} M pixels (use mae-eval for larger ones)"
        )
    if natural:
        # As run_robustness: the other slice's stored vector is the perturbed query.
        image = load_image(partner.path, partner.id)
        value = perturb.defocus_offset_um(FOCUS_Z + severity, FOCUS_Z)
    else:
        image = perturb.apply(name, raw, severity, perturb.perturbation_rng(seed, record.id, name, severity))
        value = perturb.severity_value(name, severity)
    # As run_robustness: deep enough that k results survive the exclusion.
    depth = min(n_index, k + len(drop) + 2)

    def embed_and_search() -> list:
        if natural:
            vectors = np.concatenate(
                [retriever.embed_arrays([raw]), retriever.store.get_vectors([partner.id])]
            )
        else:
            vectors = retriever.embed_arrays([raw, image])
        return retriever.search_vectors(vectors, QueryOptions(k=depth))

    clean_hits, pert_hits = compute(embed_and_search) if compute is not None else embed_and_search()
    clean = gallery.cut(_ids(clean_hits), drop, k)
    perturbed = gallery.cut(_ids(pert_hits), drop, k)
    self_drop = drop - {record.id}
    self_list = gallery.cut(_ids(pert_hits), self_drop, k)
    return {
        # Each list's hits with their own query's scores: an image in both lists has two.
        "clean": _ranked(clean_hits, clean),
        "perturbed": _ranked(pert_hits, perturbed),
        "metrics": compare_results(record.id, clean, perturbed, k, rbo_p, self_list=self_list),
        "chance": {
            m: chance.chance_level(m, n_index - len(self_drop) if m == "self_at_1" else candidates, k, rbo_p)
            for m in chance.CHANCE_METRICS
        },
        "candidates": candidates,
        "value": value,
        "image": image,
    }


def _ranked(hits: list[Hit], kept: list[int]) -> list[dict[str, Any]]:
    """The hits of ``kept`` ids, in that order, ranked 1..len(kept) (their rank in the gallery left)."""
    by_id = {h.id: h for h in hits}
    return [{**by_id[i].to_dict(), "rank": n + 1} for n, i in enumerate(kept)]


def defocus_partner(catalog: Catalog, record: ImageRecord, severity: int) -> ImageRecord:
    """The image ``defocus_z`` compares ``record`` with at ``severity`` slices: the same field of view
    (its site, or its multi-plane file) and channel ``severity`` slices from ``record``'s z, the lower id
    first (as :func:`eval.perturb.z_pairs` orders them, with ``record`` as the reference).

    Raises
    ------
    ConfigError
        When no such image is indexed (the message names the severities there are).
    """
    group = catalog.relatives(record.id, GROUP_KEYS)
    near = [r for r in catalog.records.get_many(group) if r is not None] if group is not None else []
    pairs = perturb.z_pairs(near, reference_z=record.z) if record.z is not None else {}
    others = pairs.get(record.id, [])
    for other_id, dz in others:
        if dz == severity:
            return catalog.records[other_id]
    have = sorted({dz for _, dz in others})
    raise ConfigError(
        f"image {record.id} has no image of its field of view {severity} z-slices away"
        + (f"; severities there: {', '.join(map(str, have))}" if have else " (it is not part of a z-stack)")
    )


def has_stacks(catalog: Catalog) -> bool:
    """True when the index holds images at more than one z (so that ``defocus_z`` may find pairs)."""
    return len(catalog.records.distinct("z")) > 1


class PerturbSlots:
    """At most ``limit`` perturbations at once, and one per client address: a busy client gets 429."""

    def __init__(self, limit: int, error: type) -> None:
        import threading

        self._lock = threading.Lock()
        self._limit = limit
        self._clients: dict[str, int] = {}
        self._error = error

    def take(self, client: str) -> Any:
        """A context manager holding one slot for ``client``; raises ``error(429, ...)`` when none is free."""
        import contextlib

        with self._lock:
            if self._clients.get(client) or sum(self._clients.values()) >= self._limit:
                raise self._error(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "a perturbation is already running for this client (or the server's "
                    f"{self._limit} are busy); wait for it to finish",
                )
            self._clients[client] = 1

        @contextlib.contextmanager
        def held() -> Any:
            try:
                yield
            finally:
                with self._lock:
                    self._clients.pop(client, None)

        return held()


def _finite(v: float) -> float | None:
    """JSON has no infinity: the identity of ``poisson_noise`` (infinite photons) goes out as null."""
    return v if math.isfinite(v) else None


def register(app: Any) -> None:
    """Add ``GET /api/perturbations`` and ``POST /api/perturb`` to a query server's application.

    ``POST /api/perturb`` takes ``{"id", "perturbation", "severity", "k", "seed", "rbo_p", "exclude"}``
    (``exclude`` one of :data:`eval.gallery.EXCLUDE`, default ``mae-eval``'s) and answers
    :func:`compare_one`'s result with the perturbed image as a PNG data URL. ``GET /api/perturbations``
    lists ``defocus_z`` too where the index holds images at more than one z.
    """
    import threading

    from indexer.images.sources import ChangedImageError
    from retriever.http.app import ClientError, json_response, parse_id
    from retriever.http.checks import check_json_size

    service = app.service
    slots = PerturbSlots(service.limits.max_perturbs, ClientError)
    # Per store, its catalog: the explorer's for the served store, one of its own for another backend (a
    # FAISS store's own record table, no copy; Redis's records read once into columns). A query's
    # relatives come from its grouped lookup, in the size of the group, as mae-eval finds them.
    catalogs: dict[int, Catalog] = {}
    catalogs_lock = threading.Lock()

    def catalog_of(retriever: Retriever) -> Catalog:
        catalog = getattr(app, "catalog", None)
        if catalog is not None and catalog.store is retriever.store:
            return catalog
        with catalogs_lock:
            key = id(retriever.store)
            if key not in catalogs:
                catalogs[key] = Catalog(retriever.store)
            return catalogs[key]

    def perturbations(req: Any) -> Any:
        offered = [
            {
                "name": n,
                "values": [_finite(perturb.severity_value(n, s)) for s in range(perturb.N_LEVELS + 1)],
            }
            for n in perturb.PERTURBATIONS
        ]
        catalog = getattr(app, "catalog", None) or catalog_of(service.retriever)
        if has_stacks(catalog):  # real z-slices: severity = slices from the query's own
            offered.append(
                {"name": NATURAL, "values": [perturb.defocus_offset_um(FOCUS_Z + s) for s in range(6)]}
            )
        return json_response(
            {
                "perturbations": offered,
                "defaults": {"k": 10, "seed": 0, "rbo_p": 0.9, "exclude": gallery.DEFAULT_EXCLUDE},
            }
        )

    def run(req: Any) -> Any:
        check_json_size(req.body, service.limits, "a /api/perturb")
        obj = req.json()
        allowed = {"id", "perturbation", "severity", "k", "seed", "rbo_p", "backend", "exclude"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise ClientError(
                HTTPStatus.BAD_REQUEST, f"unknown key {unknown[0]!r}; takes: {', '.join(sorted(allowed))}"
            )
        try:
            qid, severity = parse_id(obj["id"]), obj.get("severity", 0)
            k, seed, p = obj.get("k", 10), obj.get("seed", 0), float(obj.get("rbo_p", 0.9))
            for name, v in (("id", qid), ("severity", severity), ("k", k), ("seed", seed)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ConfigError(f"{name} must be a non-negative integer")
            if k < 1 or k > 100:
                raise ConfigError("k must be within 1..100")
            name = str(obj.get("perturbation", ""))
            names = (*perturb.PERTURBATIONS, NATURAL)
            if name not in names:
                raise ConfigError(f"unknown perturbation {name!r}; choose from {', '.join(names)}")
            exclude = str(obj.get("exclude", gallery.DEFAULT_EXCLUDE))
            if exclude not in gallery.EXCLUDE:
                raise ConfigError(f"unknown exclude {exclude!r}; choose from {', '.join(gallery.EXCLUDE)}")
            retriever = service.pick(obj.get("backend"))
            record = retriever.store.get([qid])[0]
        except KeyError as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, f"missing key {e}") from e
        except (ConfigError, TypeError, ValueError) as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, str(e)) from e
        if record is None:
            raise ClientError(HTTPStatus.NOT_FOUND, f"id {qid} is not in the index")
        catalog = catalog_of(retriever)
        excluded = gallery.exclusions_from(catalog.relatives, [qid], exclude).excluded[qid]
        limits = service.limits
        try:
            partner = defocus_partner(catalog, record, severity) if name == NATURAL else None
            # Reading and perturbing run here, on this request's thread, a bounded few at once and one per
            # client; only the embedding and search wait their turn on the compute thread, after queries.
            with slots.take(getattr(req, "client", "")):
                out = compare_one(
                    retriever, record, name, severity, k, seed, p, excluded, len(catalog.records), partner,
                    compute=lambda fn: service.compute(fn, priority=1), max_pixels=limits.max_perturb_pixels,
                )  # fmt: skip
        except ConfigError as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, str(e)) from e
        except ChangedImageError as e:  # replaced since the build: its pixels are not the indexed image's
            raise ClientError(HTTPStatus.CONFLICT, str(e)) from e
        except OSError as e:
            raise ClientError(
                HTTPStatus.NOT_FOUND, f"the source image of id {qid} cannot be read: {e}"
            ) from e
        png = render.render_png(out.pop("image"), retriever.preprocess.intensity, 512)
        out["image"] = "data:image/png;base64," + base64.b64encode(png).decode()
        out["metrics"] = {m: _finite(v) if isinstance(v, float) else v for m, v in out["metrics"].items()}
        out["chance"] = {m: _finite(v) for m, v in out["chance"].items()}
        out.update(
            id=qid,
            perturbation=name,
            severity=severity,
            k=k,
            seed=seed,
            rbo_p=p,
            exclude=exclude,
            value=_finite(out["value"]),
        )
        return json_response(out)

    app.add("GET", "/api/perturbations", perturbations)
    app.add("POST", "/api/perturb", run)
