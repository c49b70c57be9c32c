"""``mae-search``: query an index by image or by id. Parses options, builds the config, calls the retriever."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import click

from indexer.cli_common import (
    faiss_search_options,
    handle_errors,
    redis_url_option,
    runtime_options,
    setup_logging,
    verbose_option,
)
from indexer.config import RedisConfig
from indexer.errors import ConfigError
from indexer.stores.base import Hit, MetadataFilter

OUTPUT_FIELDS = (
    "query",
    "rank",
    "id",
    "score",
    "path",
    "plate",
    "well",
    "row",
    "column",
    "site",
    "channel",
    "z",
)


def open_store(
    index_dir: Path | None,
    redis: RedisConfig | None,
    backend: str | None,
    nprobe: int | None = None,
    ef_search: int | None = None,
):
    """Open the store to search: Redis when a URL is given (or asked for), else the FAISS folder (with
    ``nprobe``/``ef_search`` overriding its manifest's search parameters)."""
    backend = backend or ("redis" if redis else "faiss")
    if backend == "redis":
        if redis is None:
            raise ConfigError("--backend redis needs --redis-url (or MAE_REDIS_URL)")
        from indexer.stores.redis_store import RedisStore

        return RedisStore(redis)
    if index_dir is None:
        raise ConfigError("--index DIR is required for the FAISS backend")
    from indexer.stores.faiss_store import FaissStore

    return FaissStore(index_dir, read_only=True, nprobe=nprobe, ef_search=ef_search)


def hits_to_rows(queries: list[str], results: list[list[Hit]]) -> list[dict]:
    """Flatten per-query hits into rows with the query's name first."""
    rows = []
    for q, hits in zip(queries, results):
        for h in hits:
            rows.append({"query": q, **h.to_dict()})
    return rows


def format_rows(rows: list[dict], fmt: str) -> str:
    """Render rows as an aligned table, JSON (a list of objects) or CSV."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=OUTPUT_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if not rows:
        return "(no results)"
    cols = ("rank", "score", "well", "site", "channel", "z", "id", "path")
    cells = [
        [("" if r[c] is None else f"{r[c]:.4f}" if c == "score" else str(r[c])) for c in cols] for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = []
    current = None
    for r, row in zip(rows, cells):
        if r["query"] != current:
            current = r["query"]
            lines.append(f"query: {current}")
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


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
@click.option("--max-distance", type=float, default=None, help="Only hits within this cosine distance.")
@click.option("--backend", type=click.Choice(["redis", "faiss"]), default=None,
              help="Store to search (default: redis when a Redis URL is given, else faiss).")  # fmt: skip
@redis_url_option
@click.option("--redis-index", default="mae", show_default=True)
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
def query(images, index_dir, ids, k, well, site, channel, z_slices, plate, max_distance, backend, redis_url,
          redis_index, hnsw_ef_runtime, nprobe, ef_search, model, device, precision, compile_model, server, fmt,
          verbose):  # fmt: skip
    """Find the indexed images nearest to IMAGES (TIFF files) or to indexed images given by --id.

    Scores are cosine similarity (1.0 = identical).
    """
    setup_logging(verbose)
    if not images and not ids:
        raise ConfigError("give one or more query images, or --id ID")
    from retriever.search import QueryOptions, Retriever

    where = MetadataFilter(well=well, site=site, channel=channel, z=z_slices, plate=plate)
    options = QueryOptions(k=k, where=where, max_distance=max_distance)
    if server:
        from retriever.server import query_server

        if ids:
            raise ConfigError("--server takes query images; query by --id against the index directly")
        rows = []
        for name, hits in zip(images, query_server(server, list(images), options)):
            rows.extend({"query": str(name), **h} for h in hits)
        click.echo(format_rows(rows, fmt))
        return
    redis = (
        RedisConfig(url=redis_url, index_name=redis_index, ef_runtime=hnsw_ef_runtime) if redis_url else None
    )
    store = open_store(index_dir, redis, backend, nprobe, ef_search)
    try:
        retriever = Retriever.open(store, model, device, precision, compile_model)
        names, results = [], []
        if images:
            names += [str(p) for p in images]
            results += retriever.search_files(list(images), options)
        if ids:
            names += [f"id:{i}" for i in ids]
            results += retriever.search_ids(list(ids), options)
    finally:
        store.close()
    click.echo(format_rows(hits_to_rows(names, results), fmt))


@main.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path), help="Index folder (FAISS).")
@click.option("--backend", type=click.Choice(["redis", "faiss"]), default=None)
@redis_url_option
@click.option("--redis-index", default="mae", show_default=True)
@click.option(
    "--hnsw-ef-runtime", default=800, show_default=True, type=int, help="HNSW search breadth (Redis)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--max-upload-mb", default=64, show_default=True, type=int, help="Largest request body.")
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
    nprobe,
    ef_search,
    model,
    device,
    precision,
    compile_model,
    verbose,
):
    """Serve queries over HTTP with the model and index kept loaded (JSON API).

    \b
    Example:
      mae-search serve --index runs/idx --port 8000 &
      mae-search query image.tif --server http://127.0.0.1:8000
      curl -s --data-binary @image.tif 'http://127.0.0.1:8000/query?k=5&well=A01'
    """
    setup_logging(max(verbose, 1))
    from retriever.search import Retriever
    from retriever.server import QueryService, make_server

    redis = (
        RedisConfig(url=redis_url, index_name=redis_index, ef_runtime=hnsw_ef_runtime) if redis_url else None
    )
    store = open_store(index_dir, redis, backend, nprobe, ef_search)
    service = QueryService(Retriever.open(store, model, device, precision, compile_model))
    server = make_server(service, host, port, max_upload_mb * 1024 * 1024)
    service.warm_up()
    # HTTP on a side thread; the model and index work on this one, the thread that loaded the model
    # (see QueryService).
    threading.Thread(target=server.serve_forever, name="mae-http", daemon=True).start()
    click.echo(f"Serving {service.health()['count']} images on http://{host}:{server.server_port}", err=True)
    try:
        service.run_compute(threading.Event())
    finally:
        server.shutdown()
        server.server_close()
        store.close()


if __name__ == "__main__":  # pragma: no cover
    main()
