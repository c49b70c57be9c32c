"""``mae-search``: query an index by image or by id. Parses options, builds the config, calls the retriever."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import click

from indexer.cli.options import (
    faiss_search_options,
    handle_errors,
    redis_options,
    runtime_options,
    setup_logging,
    verbose_option,
)
from indexer.core.csv_safe import dict_writer, escape_formula
from indexer.core.errors import ConfigError, DecodeError, MaeError
from indexer.core.records import Hit, MetadataFilter
from indexer.core.terminal import printable
from indexer.stores import open_stores
from indexer.stores.binding import describe_identity, store_identity

OUTPUT_FIELDS = (
    "query",
    "rank",
    "id",
    "score",
    "percentile",
    "path",
    "plate",
    "well",
    "row",
    "column",
    "site",
    "channel",
    "z",
    "tags",
    "store",
    "index",
)


def reader_redis(index_dir: Path | None, redis_url: str | None, redis_index: str | None, ef_runtime: int,
                 backend: str | None):  # fmt: skip
    """The Redis settings of a reader: none for the FAISS backend or without a URL; the index name given,
    else the one the --index folder records."""
    from indexer.stores.binding import redis_config_for

    if backend == "faiss" or not redis_url:
        return None
    return redis_config_for(index_dir, redis_url, redis_index, writing=False, ef_runtime=ef_runtime)


def hits_to_rows(
    queries: list[str], results: list[list[Hit]], identity: dict | None = None, context=None
) -> list[dict]:
    """Flatten per-query hits into rows with the query's name first (and the store and index that
    answered, when given; and each score's percentile among the index's nearest-neighbour scores, where
    ``context``, a :class:`~retriever.score_context.ScoreContext`, is given)."""
    rows = []
    where = {"store": identity["store"], "index": identity["index"]} if identity else {}
    for q, hits in zip(queries, results):
        pct = (
            context.percentile([h.score for h in hits]).tolist()
            if context is not None
            else [None] * len(hits)
        )
        for h, p in zip(hits, pct):
            # None without a context, NaN where the context has no reference scores: both print as empty.
            pct_value = None if p is None or p != p else round(p, 1)
            rows.append({"query": q, **h.to_dict(), "percentile": pct_value, **where})
    return rows


def format_rows(rows: list[dict], fmt: str, answered_by: str | None = None) -> str:
    """Render rows as an aligned table (headed by ``answered_by``, the store and index that answered),
    JSON (a list of objects) or CSV."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        rows = [{**r, "tags": ";".join(f"{k}={v}" for k, v in (r.get("tags") or {}).items())} for r in rows]
        buf = io.StringIO()
        w = dict_writer(buf, OUTPUT_FIELDS, extrasaction="ignore")  # a path holding \r or \n is quoted
        w.writeheader()
        # Paths and tags are the user's text: a file named =HYPERLINK(...) must not run in a spreadsheet.
        w.writerows({k: escape_formula(v) for k, v in r.items()} for r in rows)
        return buf.getvalue().rstrip("\n")
    head = [f"answered by {answered_by}"] if answered_by else []
    if not rows:
        return "\n".join([*head, "(no results)"])
    # A tags column only where a hit has tags (a --metadata table's columns): key=value, ";" between.
    tagged = any(r.get("tags") for r in rows)
    cols = ("rank", "score", "percentile", "well", "site", "channel", "z", "id", *(("tags",) if tagged else ()),
            "path")  # fmt: skip
    cells = [[_cell(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = list(head)
    current = None
    for r, row in zip(rows, cells):
        if r["query"] != current:
            current = r["query"]
            lines.append(f"query: {printable(str(current))}")
            lines.append(("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths))).rstrip())
        lines.append(("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths))).rstrip())
    return "\n".join(lines)


def _cell(value, column: str) -> str:
    """One table cell: a score to 4 decimals, a percentile whole, tags as ``key=value;...``, None as empty;
    a control character of a file name shown as its escape (a terminal would run it)."""
    if value is None:
        return ""
    if column == "score":
        return f"{value:.4f}"
    if column == "percentile":
        return f"{value:.0f}"
    if column == "tags":
        return printable(";".join(f"{k}={v}" for k, v in value.items()))
    return printable(str(value))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-microscopy")
def main() -> None:
    """Search a microscopy embedding index.

    \b
    Example:
      mae-search query examples/bbbc006/BBBC006_v1_images_z_16/<file>.tif --index runs/idx -k 5
    """


@main.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), help="Index folder (FAISS).")
@click.option("--id", "ids", multiple=True, type=int, help="Query by an indexed image's id (repeatable).")
@click.option("-k", "k", default=10, show_default=True, type=int, help="Number of results per query.")
@click.option("--well", multiple=True, help="Only these wells, e.g. A01 (repeatable).")
@click.option("--site", multiple=True, type=int, help="Only these sites (repeatable).")
@click.option("--channel", multiple=True, help="Only these channels: w1, w2 (repeatable).")
@click.option("--z", "z_slices", multiple=True, type=int, help="Only these z-slices (repeatable).")
@click.option("--plate", multiple=True, help="Only these plates (repeatable).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="Only images with this tag, from a --metadata table column (repeatable: OR within a key, "
                   "AND across keys).")  # fmt: skip
@click.option("--max-distance", type=float, default=None, help="Only hits within this cosine distance.")
@click.option("--backend", type=click.Choice(["redis", "faiss"]), default=None,
              help="Store to search (default: redis when a Redis URL is given, else faiss).")  # fmt: skip
@redis_options
@click.option(
    "--hnsw-ef-runtime", default=800, show_default=True, type=int, help="HNSW search breadth (Redis)."
)
@faiss_search_options
@click.option("--model", default=None, help="Another path to the index's model weights (checked).")
@runtime_options
@click.option(
    "--server", default=None, metavar="URL", help="Ask a warm `mae-search serve` instead (images only)."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@verbose_option
@handle_errors
def query(images, index_dir, ids, k, well, site, channel, z_slices, plate, tags, max_distance, backend, redis_url,
          redis_index, hnsw_ef_runtime, nprobe, ef_search, rerank, model, device, precision, compile_model, server, fmt,
          verbose):  # fmt: skip
    """Find the indexed images nearest to IMAGES (TIFF files) or to indexed images given by --id.

    Scores are cosine similarity (1.0 = identical). The percentile says where a score sits among the
    index's own nearest-neighbour scores (50: as close as a typical image's nearest neighbour). The table
    shows each hit's tags (a --metadata table's columns) as key=value; --format json or csv gives every
    field.

    \b
    Examples:
      mae-search query image.tif --index runs/idx -k 5 --tag treatment=dmso
      mae-search query --id 4191570912738437305 --index runs/idx --format csv
    """
    setup_logging(verbose)
    if not images and not ids:
        raise ConfigError("give one or more query images, or --id ID")
    from retriever import score_context
    from retriever.search import QueryOptions, Retriever

    where = MetadataFilter(well=well, site=site, channel=channel, z=z_slices, plate=plate, tags=tags)
    options = QueryOptions(k=k, where=where, max_distance=max_distance)
    if server:
        from retriever.http.client import query_server

        if ids:
            raise ConfigError("--server takes query images; query by --id against the index directly")
        rows = []
        for name, hits in zip(images, query_server(server, list(images), options)):
            rows.extend({"query": str(name), **h} for h in hits)
        click.echo(format_rows(rows, fmt))
        return
    redis = reader_redis(index_dir, redis_url, redis_index, hnsw_ef_runtime, backend)
    with open_stores(
        index_dir, redis, read_only=True, backend=backend or ("redis" if redis else "faiss"), nprobe=nprobe,
        ef_search=ef_search, rerank=rerank,
    ) as stores:  # fmt: skip
        # Queries by id search with stored vectors: the model loads only when an image needs embedding.
        retriever = Retriever.open(stores.primary, model, device, precision, compile_model, index_dir=index_dir,
                                   lazy=not images)  # fmt: skip
        names, results, failures = [], [], []
        if images:
            # With several images, one bad file must not cost the others' results: answer the usable
            # ones, then name the bad ones and exit 1.
            vectors, failures = retriever.embed_files_checked(list(images))
            if len(failures) == len(images) == 1:
                bad = failures[0]
                raise (ConfigError if bad.missing else DecodeError)(f"query image {bad.path}: {bad.reason}")
            failed = {f.path for f in failures}
            names += [str(p) for p in images if str(p) not in failed]
            if len(vectors):
                results += retriever.search_vectors(vectors, options)
        if ids:
            names += [f"id:{i}" for i in ids]
            results += retriever.search_ids(list(ids), options)
        for warning in retriever.filter_warnings(where):
            click.echo(f"Warning: {printable(warning)}", err=True)
        identity = store_identity(stores.primary)
        context = score_context.try_load_or_compute(stores.primary, index_dir)
    rows = hits_to_rows(names, results, identity, context)
    click.echo(format_rows(rows, fmt, describe_identity(identity)))
    if failures:
        for f in failures:
            click.echo(f"Error: {printable(f.path)}: {printable(f.reason)}", err=True)
        click.echo(f"Error: {len(failures)} of {len(images)} query images could not be used.", err=True)
        # 2 when every bad query is a path that cannot be read (a usage error), else 1 (bad content).
        sys.exit(2 if all(f.missing for f in failures) else 1)


@main.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path), help="Index folder (FAISS).")
@click.option("--backend", type=click.Choice(["redis", "faiss"]), default=None,
              help="Store the page and API search first (default: redis when a Redis URL is given, else faiss); "
              "with both given the page offers either.")  # fmt: skip
@redis_options
@click.option(
    "--hnsw-ef-runtime", default=800, show_default=True, type=int, help="HNSW search breadth (Redis)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free one).")  # fmt: skip
@click.option("--max-upload-mb", default=64, show_default=True, type=int, help="Largest request body.")
@click.option("--max-megapixels", default=64, show_default=True, type=int,
              help="Largest query image (the build's default limit too).")  # fmt: skip
@click.option("--request-timeout", default=30.0, show_default=True, type=float,
              help="Seconds a client may take to send one request (headers and body).")  # fmt: skip
@click.option("--threads", default=8, show_default=True, type=int, help="HTTP worker threads.")
@click.option("--reports", "reports", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A `mae-eval` report folder to link from the page (repeatable; folders beside the "
              "index holding report.html are found anyway).")  # fmt: skip
@faiss_search_options
@click.option("--model", default=None, help="Another path to the index's model weights (checked).")
@runtime_options
@verbose_option
@handle_errors
def serve(
    index_dir,
    backend,
    redis_url,
    redis_index,
    hnsw_ef_runtime,
    host,
    port,
    max_upload_mb,
    max_megapixels,
    request_timeout,
    threads,
    reports,
    nprobe,
    ef_search,
    rerank,
    model,
    device,
    precision,
    compile_model,
    verbose,
):
    """Serve queries over HTTP with the model and index kept loaded: the web explorer at / and the
    JSON API. Listens on 127.0.0.1 unless --host says otherwise.

    \b
    Example:
      mae-search serve --index runs/idx --port 8000 &
      mae-search query image.tif --server http://127.0.0.1:8000
      curl -s --data-binary @image.tif 'http://127.0.0.1:8000/query?k=5&well=A01'
    """
    setup_logging(verbose, floor=1)
    check_listen_address(host, port)
    from indexer.core.limits import MB, DecodeLimits, RequestLimits
    from retriever.http.service import QueryService
    from retriever.http.transport import make_server
    from retriever.search import Retriever

    limits = RequestLimits(
        max_body_bytes=max_upload_mb * MB,
        request_timeout_s=request_timeout,
        threads=threads,
        decode=DecodeLimits(max_pixels=max_megapixels * MB),
    )
    redis = reader_redis(index_dir, redis_url, redis_index, hnsw_ef_runtime, backend)
    chosen = backend or ("redis" if redis else "faiss")
    both = redis is not None and index_dir is not None and (Path(index_dir) / "manifest.json").is_file()
    # Both stores given: the page may search either, and the plate map reads the FAISS copy.
    stores = open_stores(index_dir, redis, read_only=True, backend=None if both else chosen, nprobe=nprobe,
                         ef_search=ef_search, rerank=rerank)  # fmt: skip
    primary = stores.faiss if chosen == "faiss" and stores.faiss is not None else stores.primary
    service = QueryService(
        Retriever.open(primary, model, device, precision, compile_model, index_dir=index_dir), limits
    )
    for other in stores:
        if other is not primary:
            service.add_backend(other)
    app = build_app(service, index_dir, list(reports))
    try:
        server = make_server(service, host, port, app=app)
    except OSError as e:  # the port taken, or an address this machine does not have
        raise MaeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    service.warm_up()
    # HTTP on a side thread; the model and index work on this one, the thread that loaded the model
    # (see QueryService).
    threading.Thread(target=server.serve_forever, name="mae-http", daemon=True).start()
    answered_by = describe_identity(store_identity(stores.primary))
    click.echo(f"Serving {service.health()['count']} images of {answered_by} on http://{host}:{server.server_port}",
               err=True)  # fmt: skip
    try:
        service.run_compute(threading.Event())
    finally:
        server.shutdown()
        server.server_close()
        stores.close()


def check_listen_address(host: str, port: int) -> None:
    """Refuse, before the model loads, a ``--host`` that is no address (exit 2): ``256.0.0.1``, a typo."""
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host!r} is not an address to listen on ({e})") from e


def build_app(service, index_dir: Path | None, reports: list[Path]):
    """The server's application: the JSON API, the web explorer, and the routes of installed plugins.

    Plugins are entry points of the group ``mae_microscopy.serve`` (callables taking the app); the eval
    package registers live robustness this way, so the retriever never imports eval.
    """
    import logging
    from importlib.metadata import entry_points

    from retriever import explorer
    from retriever.http.app import App

    app = App(service, service.limits)
    uid = (service.retriever.store.read_manifest() or {}).get("index_uid")
    faiss = service.backends.get("faiss")
    catalog = explorer.Catalog(service.retriever.store, faiss.store if faiss else None)
    app.catalog = catalog
    explorer.register(
        app, service, catalog, explorer.find_reports(index_dir, reports, uid), sorted(service.backends)
    )
    for ep in entry_points(group="mae_microscopy.serve"):
        try:
            ep.load()(app)
        except Exception as e:  # an optional extra missing: the page works without that panel
            logging.getLogger(__name__).warning("plugin %s not loaded: %s: %s", ep.name, type(e).__name__, e)
    return app


if __name__ == "__main__":  # pragma: no cover
    main()
