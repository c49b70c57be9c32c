"""The web explorer's server side: the page, thumbnails, facets, the plate map and report links.

Everything is added to the query server's :class:`~retriever.http.app.App` by :func:`register`:

======================  =======================================================================
``GET /``                the page (``retriever/web/index.html``); ``GET /static/NAME`` its files
``GET /thumb/{id}``      PNG thumbnail (``?size=32..512``, default 160), the index's intensity window;
                         decoded strip by strip (:mod:`indexer.images.bands`), never the whole plane
``GET /image/{id}``      PNG at full resolution (``?size=`` to shrink)
``GET /api/facets``      plates, wells, sites, channels, z values and each tag key's values, with counts
``POST /api/browse``     ``{"where", "offset", "limit", "seed"}`` -> a page of the images a filter keeps
``GET /api/map``         whether ``mae-index map`` made a map, its size, whether it is stale
``GET /api/map/points``  the map: n int64 ids then n (x, y) float32 pairs (:mod:`retriever.embedding_map`)
``GET /api/map/colours`` ``?by=FIELD|tag:KEY`` -> each map point's value code and the values' names
``GET /api/scores``      the index's sorted nearest-neighbour scores (:mod:`retriever.score_context`)
``GET /api/record/{id}`` one record, the other channel(s) of its site and z, and its z stack
``POST /api/plate``      ``{"id" | "image", "plate", "channel", "site"}`` -> best similarity per well
``GET /api/config``      backends, report folders, whether live robustness is available
``GET /reports/{i}/{f}`` a file the i-th report wrote (:mod:`retriever.reports`): an index and a name
======================  =======================================================================

Only ids in the index are served; the source path always comes from the index, never from a request.
A source that is missing or unreadable gives a placeholder PNG (header ``X-Placeholder``) and a
logged reason, never a 500. Metadata goes to the page as JSON and the page inserts it as text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import mimetypes
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from indexer.core.errors import DecodeError
from indexer.images.sources import image_bands, load_image
from retriever import render, score_context
from retriever.browse import browse
from retriever.catalog import Catalog
from retriever.embedding_map import MapView
from retriever.http.app import App, ClientError, Request, Response, json_response, options_from, parse_id
from retriever.http.checks import check_filter, is_decimal
from retriever.http.service import QueryService
from retriever.lru import SizedLRU
from retriever.reports import find_reports, read_report_file, report_index_uid

__all__ = ["Catalog", "ImageCache", "Renderer", "find_reports", "register", "report_index_uid"]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
#: Content-Security-Policy of every explorer response: no inline script, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
#: Reports (``mae-eval``'s HTML) carry an inline stylesheet and data: images, and no script: allow the
#: former, forbid any script.
REPORT_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
)


def _sec_headers(csp: str = CSP) -> list[tuple[str, str]]:
    return [("Content-Security-Policy", csp), ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")]


def _id_from(path: str, prefix: str) -> int:
    tail = path[len(prefix) :]
    if not is_decimal(tail) or len(tail) > 19 or int(tail) >= 2**63:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"bad id {tail[:40]!r}: ids are integers in [0, 2**63)")
    return int(tail)


def _one_int(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    values = req.query.get(name)
    if not values:
        return default
    try:
        v = int(values[0])
    except ValueError as e:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"{name} must be an integer") from e
    if not lo <= v <= hi:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"{name} must be within {lo}..{hi}, got {v}")
    return v


class ImageCache(SizedLRU):
    """A byte-bounded LRU of rendered PNGs keyed by (id, size)."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(max_bytes)


@dataclass
class Renderer:
    """Renders indexed images by id with the index's intensity window; caches PNGs; placeholders."""

    catalog: Catalog
    intensity: Any
    cache: ImageCache
    max_pixels: int | None = None

    def etag(self, image_id: int, size: int | None) -> str:
        """A strong ETag: the id is a hash of the file's bytes, so (id, size, window) fixes the PNG."""
        key = f"{image_id}:{size}:{self.intensity}".encode()
        return '"' + hashlib.blake2b(key, digest_size=12).hexdigest() + '"'

    def png(self, image_id: int, size: int | None) -> tuple[bytes, str | None]:
        """``(png, None)``, or ``(placeholder, reason)`` where the source cannot be read or decoded."""
        rec = self.catalog.record(image_id)
        key = (image_id, size)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, None
        try:  # a file, a zip member or one plane of a stack
            if size is None:
                data = render.render_png(load_image(rec.path, image_id), self.intensity)
            else:  # strip by strip: a 64 MP thumbnail held 610 MB at once, now the file and one band
                # A pyramid level only where the window is fixed: a percentile window is the full plane's.
                level = None if self.intensity.mode == "percentile" else size
                data = render.render_bands(image_bands(rec.path, image_id, level), self.intensity, size)
        except (OSError, DecodeError) as e:
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            log.warning("image %d (%r) cannot be shown: %s", image_id, rec.path, reason)
            return render.placeholder_png(size or 256), reason
        self.cache.put(key, data)
        return data, None


def register(
    app: App,
    service: QueryService,
    catalog: Catalog,
    reports: list[Path] | None = None,
    backends: list[str] | None = None,
) -> Renderer:
    """Add the explorer's page and endpoints to ``app``; return its renderer (tests read its cache)."""
    preprocess = service.retriever.preprocess
    renderer = Renderer(catalog, preprocess.intensity, ImageCache())
    reports = reports or []
    static = {p.name: p for p in WEB_DIR.iterdir() if p.is_file()} if WEB_DIR.is_dir() else {}

    def file_response(
        path: Path, cache: str = "no-cache", csp: str = CSP, data: bytes | None = None
    ) -> Response:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        body = path.read_bytes() if data is None else data
        return Response(body, 200, ctype, [("Cache-Control", cache), *_sec_headers(csp)])

    def page(req: Request) -> Response:
        return file_response(static["index.html"])

    def static_file(req: Request) -> Response:
        name = req.path[len("/static/") :]
        if name not in static:
            raise ClientError(HTTPStatus.NOT_FOUND, f"no such file: {name[:80]}")
        return file_response(static[name])

    def picture(req: Request, prefix: str, default_size: int | None) -> Response:
        image_id = _id_from(req.path, prefix)
        size = _one_int(req, "size", default_size or 0, 0 if default_size is None else 32, 4096) or None
        # The full view too is at most max_image_side a side: a 64 MP image was a 53 MB PNG costing 680 MB.
        size = min(size or service.limits.max_image_side, service.limits.max_image_side)
        etag = renderer.etag(image_id, size)
        if req.headers.get("if-none-match") == etag:
            catalog.record(image_id)  # an unknown id is still a 404
            return Response(b"", 304, "image/png", [("ETag", etag), ("Cache-Control", "no-cache")])
        data, problem = renderer.png(image_id, size)
        headers = [("Cache-Control", "no-cache")]
        if problem is None:
            headers.append(("ETag", etag))
        else:
            headers.append(("X-Placeholder", problem.encode("ascii", "replace").decode()))
        return Response(data, 200, "image/png", headers)

    def record(req: Request) -> Response:
        return json_response(catalog.siblings(_id_from(req.path, "/api/record/")))

    def plate(req: Request) -> Response:
        obj = req.json()
        allowed = {"id", "image", "plate", "channel", "site", "backend"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise ClientError(
                HTTPStatus.BAD_REQUEST, f"unknown key {unknown[0]!r}; takes: {', '.join(sorted(allowed))}"
            )
        if "id" in obj:
            qid = parse_id(obj["id"])
            catalog.record(qid)
            query = catalog.vector(qid)
        elif isinstance(obj.get("image"), str):
            try:
                blob = base64.b64decode(obj["image"], validate=True)
            except binascii.Error as e:
                raise ClientError(HTTPStatus.BAD_REQUEST, f"image is not base64: {e}") from e
            query = service.embed_blobs([blob])[0]
        else:
            raise ClientError(HTTPStatus.BAD_REQUEST, "give the query as an indexed id or a base64 image")

        def as_tuple(v: Any, cast) -> tuple:
            if v in (None, "", []):
                return ()
            try:
                return tuple(cast(x) for x in (v if isinstance(v, list) else [v]))
            except (TypeError, ValueError) as e:
                raise ClientError(HTTPStatus.BAD_REQUEST, f"bad filter value {v!r}") from e

        plate_name = obj.get("plate") or None
        if plate_name is not None and not isinstance(plate_name, str):
            raise ClientError(HTTPStatus.BAD_REQUEST, "plate must be a string")
        given = {k: obj[k] for k in ("plate", "channel", "site") if obj.get(k) not in (None, "", [])}
        checked = check_filter(given, service.limits)  # list lengths, string sizes, sites in range
        out = catalog.plate_map(
            query, plate_name, as_tuple(checked.get("channel"), lambda c: str(c).lower()),
            as_tuple(checked.get("site"), int),
        )  # fmt: skip
        return json_response(out)

    def config(req: Request) -> Response:
        return json_response(
            {
                "count": len(catalog.records),
                "backends": backends or [],
                "reports": [{"index": i, "name": d.name} for i, d in enumerate(reports)],
                "robustness": ("POST", "/api/perturb") in app.routes,
                "limits": {"max_upload_bytes": service.limits.max_body_bytes},
            }
        )

    index_dir = getattr(catalog.vector_store, "directory", None)
    map_view = MapView(catalog, index_dir)
    contexts: list[score_context.ScoreContext] = []

    def browse_page(req: Request) -> Response:
        obj = req.json()
        unknown = sorted(set(obj) - {"where", "offset", "limit", "seed"})
        if unknown:
            raise ClientError(
                HTTPStatus.BAD_REQUEST, f"unknown key {unknown[0]!r}; takes: where, offset, limit, seed"
            )
        where = options_from({"where": obj.get("where") or {}}).where
        try:
            offset, limit, seed = (int(obj.get(k, d)) for k, d in (("offset", 0), ("limit", 60), ("seed", 0)))
        except (TypeError, ValueError) as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, "offset, limit and seed are integers") from e
        if offset < 0 or not 1 <= limit <= 200 or not 0 <= seed < 2**63:
            raise ClientError(
                HTTPStatus.BAD_REQUEST, "offset >= 0, limit within 1..200, seed within [0, 2**63)"
            )
        return json_response(browse(catalog.records, where, seed, offset, limit))

    def map_colours(req: Request) -> Response:
        by = (req.query.get("by") or ["channel"])[0]
        try:
            return Response(
                map_view.colours_json(by), 200, "application/json", [("Cache-Control", "no-cache")]
            )
        except KeyError:
            raise ClientError(
                HTTPStatus.BAD_REQUEST, f"cannot colour by {by[:40]!r}: give a field or tag:KEY"
            ) from None

    def scores(req: Request) -> Response:
        if not contexts:  # one search of a sample, on the thread that searches (first use only)
            contexts.append(
                service.compute(score_context.load_or_compute, service.retriever.store, index_dir)
            )
        ctx = contexts[0]
        return json_response({**ctx.summary(), "scores": [round(float(v), 6) for v in ctx.scores]})

    def report_file(req: Request) -> Response:
        rest = req.path[len("/reports/") :]
        num, _, name = rest.partition("/")
        if not is_decimal(num) or int(num) >= len(reports):
            raise ClientError(HTTPStatus.NOT_FOUND, "no such report folder")
        name = name or "report.html"
        data = read_report_file(reports[int(num)], name)  # only the files the report itself wrote
        if data is None:
            raise ClientError(HTTPStatus.NOT_FOUND, f"no such report file: {name[:80]}")
        return file_response(Path(name), csp=REPORT_CSP, data=data)

    app.add("GET", "/", page, None)
    app.add("GET", "/index.html", page, None)
    app.add("GET", "/static/", static_file)
    app.add("GET", "/thumb/", lambda req: picture(req, "/thumb/", 160), {"size"})
    app.add("GET", "/image/", lambda req: picture(req, "/image/", None), {"size"})
    app.add("GET", "/api/facets", lambda req: json_response(catalog.facets()))
    app.add("GET", "/api/record/", record)
    app.add("POST", "/api/plate", plate)
    app.add("GET", "/api/config", config)
    app.add("POST", "/api/browse", browse_page)
    app.add("GET", "/api/map", lambda req: json_response(map_view.meta()))
    app.add("GET", "/api/map/points", lambda req: Response(map_view.points(), 200, "application/octet-stream",
                                                           [("Cache-Control", "no-cache")]))  # fmt: skip
    app.add("GET", "/api/map/colours", map_colours, {"by"})
    app.add("GET", "/api/scores", scores)
    app.add("GET", "/reports/", report_file)
    return renderer
