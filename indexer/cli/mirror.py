"""``mae-index verify``, ``sync``, ``repair`` and ``drop-redis``: check an index, keep Redis and its FAISS
mirror in step, rebuild what is damaged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from indexer.cli.options import (
    faiss_search_options,
    format_option,
    handle_errors,
    no_wait_option,
    redis_config,
    redis_options,
    redis_url_option,
)
from indexer.core.errors import ConfigError, IndexDamagedError, MaeError
from indexer.stores.binding import describe_identity, redis_config_for, redis_record

mirror_index_option = click.option(
    "--index", "index_dir", required=True, type=click.Path(path_type=Path), help="FAISS mirror folder."
)


@click.command()
@mirror_index_option
@redis_options
@click.option("--sample", default=200, show_default=True, help="Vectors compared and used as queries.")
@click.option("-k", "k", default=10, show_default=True, help="k of the recall@k check.")
@click.option("--min-recall", default=0.99, show_default=True, help="Lowest recall@k of Redis that passes.")
@click.option("--min-mirror-recall", default=0.0, show_default=True,
              help="Lowest recall@k of the FAISS mirror's index against exact search that passes.")  # fmt: skip
@click.option("--seed", default=0, show_default=True)
@format_option("text", "json")
@faiss_search_options
@handle_errors
def verify(
    index_dir,
    redis_url,
    redis_index,
    sample,
    k,
    min_recall,
    min_mirror_recall,
    seed,
    fmt,
    nprobe,
    ef_search,
    rerank,
):
    """Check an index for damage and, with --redis-url, that Redis and the FAISS mirror agree; exit 1 on
    any damage or divergence.

    Without Redis: every shard against its recorded size, rows and SHA-256, the snapshot, the manifest's
    checksum. With Redis also: the Redis schema, that every hash is indexed and has a sound vector, and
    counts, id sets, manifests, sampled vectors, and recall@k of Redis search against exact FAISS search.
    Always: recall@k of the FAISS mirror's own index (HNSW, IVF, PQ) against exact search over the
    shards' float vectors, on --sample stored vectors as queries (1.0 for the exact Flat kind).

    \b
    Examples:
      mae-index verify --index runs/idx
      mae-index verify --index runs/idx --redis-url redis://localhost:6379
    """
    from indexer.stores import open_stores
    from indexer.stores.mirror import verify_stores

    if not redis_url:
        with open_stores(
            index_dir, None, read_only=True, nprobe=nprobe, ef_search=ef_search, rerank=rerank
        ) as stores:
            problems, count = stores.faiss.check(full=True), stores.faiss.count()
            kind, mirror_recall, line = _mirror_recall(stores.faiss, k, sample, min_mirror_recall)
        ok = not problems and mirror_recall >= min_mirror_recall
        if fmt == "json":
            click.echo(json.dumps({"ok": ok, "count": count, "damage": problems, "faiss_index": kind,
                                   "mirror_recall_at_k": mirror_recall}))  # fmt: skip
        else:
            click.echo(f"images: {count}")
            for line_ in problems:
                click.echo(f"damaged: {line_}")
            click.echo(line)
            click.echo("OK" if ok else ("DAMAGED" if problems else "LOW RECALL"))
        sys.exit(0 if ok else 1)
    redis = redis_config_for(index_dir, redis_url, redis_index, writing=False)
    # Another folder's Redis index is refused by index uid; counts and ids are what verify reports.
    with open_stores(
        index_dir, redis, read_only=True, pair_check="uid", nprobe=nprobe, ef_search=ef_search, rerank=rerank
    ) as stores:
        tol = stores.redis.vector_tolerance
        report = verify_stores(stores.redis, stores.faiss, sample=sample, k=k, seed=seed, vector_tolerance=tol,
                               min_recall=min_recall, exact=stores.faiss.exact_searcher())  # fmt: skip
        primary, mirror = stores.redis.identity, stores.faiss.identity
        kind, mirror_recall, line = _mirror_recall(stores.faiss, k, sample, min_mirror_recall)
    d = report.to_dict()
    d["primary"], d["mirror"] = primary, mirror
    d.update(
        faiss_index=kind,
        mirror_recall_at_k=mirror_recall,
        ok=report.ok and mirror_recall >= min_mirror_recall,
    )
    if fmt == "json":
        click.echo(json.dumps(d))
    else:
        click.echo(f"{describe_identity(primary)} vs {describe_identity(mirror)}")
        for line in d["damage_primary"] + d["damage_mirror"]:
            click.echo(f"damaged: {line}")
        click.echo(f"counts: redis {d['count_primary']}, faiss {d['count_mirror']}")
        click.echo(
            f"ids missing: in redis {d['missing_in_primary_count']}, in faiss {d['missing_in_mirror_count']}"
        )
        click.echo(f"manifests equal: {d['manifest_equal']}")
        click.echo(
            f"sampled vectors: {d['sampled']}, max |diff| {d['max_vector_diff']:.3g} (tolerance {tol:g})"
        )
        click.echo(f"recall@{k} of redis vs exact faiss: {d['recall_at_k']:.4f} (min {min_recall})")
        click.echo(line)
        click.echo("OK" if d["ok"] else "DIVERGED")
    sys.exit(0 if d["ok"] else 1)


def _mirror_recall(store, k: int, sample: int, floor: float) -> tuple[str, float, str]:
    """``(kind, recall@k of its index against exact search, a line for the report)``."""
    recall = store.measure_recall(k, sample) if not store.kind.exact else 1.0
    settings = ", ".join(
        f"{n} {v}" for n, v in store.search_settings.items() if n in ("nprobe", "efSearch", "rerank")
    )
    line = (
        f"recall@{k} of the faiss {store.kind.factory} index vs exact: {recall:.4f} "
        f"(min {floor}; {settings or 'exact'})"
    )
    return store.kind.factory, recall, line


@click.command()
@mirror_index_option
@redis_options
@click.option("--allow-shrink", is_flag=True, help="Let the mirror lose images that Redis no longer has.")
@no_wait_option
@handle_errors
def sync(index_dir, redis_url, redis_index, allow_shrink, no_wait):
    """Rebuild the FAISS mirror at --index from Redis (e.g. on a second machine, or after damage).

    Refuses to delete images from the mirror that Redis lacks unless --allow-shrink; the old shards
    are compacted away only once the new mirror is verified against Redis.

    \b
    Example:
      mae-index sync --index runs/idx --redis-url redis://localhost:6379
    """
    from tqdm.auto import tqdm

    from indexer.stores import open_stores
    from indexer.stores.faiss.store import FaissStore
    from indexer.stores.mirror import sync_and_compact

    if not redis_url:
        raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
    redis = _redis_for_damaged_folder(index_dir, redis_url, redis_index)
    with open_stores(None, redis) as source:
        manifest = source.redis.read_manifest()
        if manifest is None:
            raise ConfigError(f"{source.redis.location} has no manifest: nothing was built into it")
        identity = source.redis.identity
        # A damaged mirror may be synced: the sync rewrites it from Redis.
        target = FaissStore(index_dir, dim=manifest["dim"], wait=not no_wait, allow_damage=True)
        try:
            with tqdm(total=source.redis.count(), unit="vec", desc="sync") as bar:
                report = sync_and_compact(source.redis, target, progress=lambda done: bar.update(done - bar.n),
                                          allow_shrink=allow_shrink)  # fmt: skip
            # The folder now mirrors this Redis index: record it, so readers need no --redis-index.
            target.write_manifest({**manifest, "redis": redis_record(identity["index"], identity["server"])})
        finally:
            target.close()
    deleted = f" (deleted {report.deleted})" if report.deleted else ""
    click.echo(f"Mirrored {report.copied} vectors from {describe_identity(identity)} into {index_dir}{deleted}.",
               err=True)  # fmt: skip
    if report.damaged_in_source:
        ids = report.damaged_in_source
        click.echo(f"Damaged in Redis (missing or corrupt vector), not copied: {len(ids)} images, ids {ids[:20]}; "
                   f"`mae-index repair --index {index_dir} --redis-url URL` rewrites them from the mirror.",
                   err=True)  # fmt: skip
        sys.exit(1)


def _redis_for_damaged_folder(index_dir: Path, redis_url: str | None, redis_index: str | None):
    """The Redis index to use with a folder whose manifest may be damaged (it then cannot say which)."""
    try:
        return redis_config_for(index_dir, redis_url, redis_index, writing=False)
    except IndexDamagedError:
        if not redis_index:
            raise ConfigError(
                f"the manifest of {index_dir} is damaged, so it cannot say which Redis index it mirrors: "
                "give --redis-index NAME"
            ) from None
        return redis_config(redis_url, redis_index)


@click.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@redis_options
@no_wait_option
@format_option("text", "json")
@handle_errors
def repair(index_dir, redis_url, redis_index, no_wait, fmt):
    """Rebuild a damaged index folder from whatever is intact: its sound shards, Redis (--redis-url),
    and index.faiss. With Redis, hashes lost from Redis or with a missing or corrupt vector are rewritten
    from the folder.

    \b
    Example:
      mae-index verify --index runs/idx          # names the damaged part
      mae-index repair --index runs/idx --redis-url redis://127.0.0.1:6379/0
    """
    from indexer.stores.repair import repair_index

    redis = _redis_for_damaged_folder(index_dir, redis_url, redis_index) if redis_url else None
    report = repair_index(index_dir, redis, wait=not no_wait)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict()))
        return
    if report.redis_manifest_restored:
        click.echo("Rewrote the Redis manifest, lost from Redis, from the folder's.", err=True)
    if not report.damage and not report.redis_rewritten and not report.redis_manifest_restored:
        click.echo(f"Nothing to repair: {index_dir} is sound ({report.total} images).", err=True)
        return
    for line in report.damage:
        click.echo(f"damaged: {line}", err=True)
    if report.damage:
        click.echo(
            f"Rebuilt {index_dir}: {report.total} images ({report.from_shards} from sound shards, "
            f"{report.from_redis} from Redis, {report.from_snapshot} from index.faiss without metadata); old "
            f"shards moved to {index_dir / 'damaged'}.",
            err=True,
        )
    if report.redis_rewritten:
        click.echo(
            f"Rewrote {report.redis_rewritten} damaged or lost Redis hashes from the folder.", err=True
        )
    if report.from_snapshot:
        click.echo(
            f"{report.from_snapshot} images have their vector but no path or metadata: run the same "
            "`mae-index build` again to restore them.",
            err=True,
        )


@click.command("drop-redis")
@redis_url_option
@click.option(
    "--redis-index", required=True, help="The Redis index to delete, with its vectors and manifest."
)
@handle_errors
def drop_redis(redis_url, redis_index):
    """Delete a Redis index, its vectors and its manifest (index folders that mirror it keep theirs).

    \b
    Example:
      mae-index drop-redis --redis-url redis://localhost:6379 --redis-index mae-idx
    """
    from indexer.stores import open_stores

    with open_stores(None, redis_config(redis_url, redis_index)) as stores:
        n = stores.redis.count()
        if n == 0 and stores.redis.read_manifest() is None:
            raise MaeError(f"there is no Redis index {redis_index!r} at {describe_identity(stores.redis.identity)}; "
                           "nothing dropped (mae-index info lists an index folder's Redis index)")  # fmt: skip
        stores.redis.drop(delete_documents=True)
        identity = stores.redis.identity
    click.echo(f"Dropped {describe_identity(identity)} and its {n} vectors.", err=True)
