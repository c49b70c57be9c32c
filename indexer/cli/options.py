"""What the three click CLIs share: exit codes, logging to stderr, and option groups.

Exit codes: 0 success, 1 runtime failure (any :class:`MaeError`), 2 usage or configuration error.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from indexer.core.errors import ConfigError, MaeError
from indexer.core.terminal import printable_message

REDIS_URL_ENV = "MAE_REDIS_URL"


class _PrintableFormatter(logging.Formatter):
    """Log lines with the control characters of file names shown as escapes (:mod:`indexer.core.terminal`)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable_message(super().format(record))


def setup_logging(verbose: int, floor: int = 0) -> None:
    """Log to stderr (stdout stays clean for ``--format json``); quiet the libraries' progress bars.

    ``floor``: the least verbosity a command logs at (``serve`` says what it serves); the libraries'
    chatter (faiss's loader trying AVX512 and AVX2 builds) shows only with the user's own ``-v``.
    """
    level = logging.WARNING - 10 * min(max(verbose, floor), 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("faiss.loader").setLevel(logging.NOTSET if verbose else logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            click.echo(f"Error: {printable_message(str(e))}", err=True)
            sys.exit(2)
        except MaeError as e:
            click.echo(f"Error: {printable_message(str(e))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


#: The modules each optional extra provides, checked before a command starts any work.
EXTRAS = {"eval": ("scipy", "matplotlib", "sklearn"), "ray": ("ray", "fsspec"), "export": ("anndata",)}


def require_extra(extra: str) -> None:
    """Refuse to start a command whose optional extra is not installed, naming what to install.

    Raises
    ------
    ConfigError
        When a module of ``extra`` cannot be imported (exit code 2), before any work is done.
    """
    import importlib

    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(
            f"this command needs the [{extra}] extra ({', '.join(missing)} missing): "
            f"pip install 'mae-microscopy[{extra}]' (or -e '.[{extra}]' in a checkout)"
        )


def redis_url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--redis-url`` (or ``MAE_REDIS_URL``); the value is never echoed."""
    return click.option(
        "--redis-url",
        envvar=REDIS_URL_ENV,
        default=None,
        metavar="URL",
        help=f"Redis with vector search (redis:// or rediss://, user:password allowed); env {REDIS_URL_ENV}.",
    )(fn)


def no_wait_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-wait``: fail at once when another writer holds the index folder (default: wait for it)."""
    return click.option(
        "--no-wait",
        is_flag=True,
        help="Fail at once if another build/sync/repair is writing this index (default: wait for it).",
    )(fn)


def faiss_search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--nprobe``, ``--ef-search`` and ``--rerank``: override the FAISS mirror's search parameters (from
    its manifest)."""
    fn = click.option(
        "--rerank",
        type=int,
        default=None,
        help="FAISS PQ candidates per result re-scored with the float vectors on disk; 0 ranks by the PQ "
        "codes alone [default: the value the build tuned, in the manifest].",
    )(fn)
    fn = click.option(
        "--ef-search",
        type=int,
        default=None,
        help="FAISS HNSW search breadth [default: the value the build tuned, in the manifest].",
    )(fn)
    return click.option(
        "--nprobe",
        type=int,
        default=None,
        help="FAISS IVF lists searched per query [default: the value the build tuned, in the manifest].",
    )(fn)


def verbose_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-v``/``-vv`` for more logging on stderr."""
    return click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")(fn)


def runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--device``, ``--precision`` and ``--compile``: where and how the model runs."""
    fn = click.option(
        "--compile",
        "compile_model",
        is_flag=True,
        help="Run the model through torch.compile: a one-off compile per batch shape "
        "(about 30 s for ViT-B on CPU), then faster batches.",
    )(fn)
    fn = click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="bf16 autocast where the hardware has native bf16 (auto), or force fp32/bf16.",
    )(fn)
    return click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")(fn)


def redis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--redis-url`` (or ``MAE_REDIS_URL``) and ``--redis-index`` (the index name and key prefix)."""
    fn = click.option(
        "--redis-index",
        default=None,
        help="Redis index name (key prefix) [default: the one the --index folder records; a new folder "
        "gets mae-<folder>-<hash>].",
    )(fn)
    return redis_url_option(fn)


def format_option(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--format`` with ``choices`` (the first is the default), passed to the command as ``fmt``."""
    return click.option(
        "--format", "fmt", type=click.Choice(list(choices)), default=choices[0], show_default=True
    )


def source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--channels`` (w1, w2 or both) and repeatable ``--z``: which images of DATA to use."""
    fn = click.option("--z", "z_slices", multiple=True, type=int, help="Only these z-slices (repeatable).")(
        fn
    )
    return click.option(
        "--channels", type=click.Choice(["w1", "w2", "both"]), default="both", show_default=True
    )(fn)


def channels_tuple(value: str) -> tuple[str, ...]:
    """The ``--channels`` choice as the channel tuple of a :class:`~indexer.core.config.SourceConfig`."""
    return {"w1": ("w1",), "w2": ("w2",), "both": ()}[value]


def redis_config(redis_url: str | None, redis_index: str, required: bool = True, **kw: Any):
    """The :class:`~indexer.core.config.RedisConfig` of ``--redis-url``/``--redis-index``; ``None`` without a URL.

    Raises
    ------
    ConfigError
        ``required`` and no URL was given.
    """
    from indexer.core.config import RedisConfig

    if not redis_url:
        if required:
            raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
        return None
    return RedisConfig(url=redis_url, index_name=redis_index, **kw)


def option_group(*decorators: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Several options as one decorator, applied in the order listed (as if written above one another)."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# -- option values parsed once, here, into the typed values the config takes -----------------------------


class KindChoice(click.ParamType):
    """``--faiss-index``: ``auto`` or a FAISS factory string, as a
    :class:`~indexer.core.config.FaissIndexSpec` holding the canonical factory (``hnsw`` -> ``HNSW32``)."""

    name = "kind"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse one value (a spec passes through: click converts defaults too)."""
        from indexer.core.config import FaissIndexSpec
        from indexer.stores.faiss.kinds import parse_kind

        if isinstance(value, FaissIndexSpec):
            return value
        if value == "auto":
            return FaissIndexSpec()
        try:
            return FaissIndexSpec(parse_kind(value).factory)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


class MemorySize(click.ParamType):
    """``--faiss-memory``: a size like ``512M``, ``4G``, ``1.5GB`` or plain bytes, as bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse one value into bytes."""
        from indexer.stores.faiss.kinds import parse_memory

        if isinstance(value, int):
            return value
        try:
            return parse_memory(value)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


class FloatPair(click.ParamType):
    """``LOW,HIGH`` (``--window 0,4095``) as a ``(low, high)`` tuple of floats."""

    name = "low,high"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse one value (a tuple passes through)."""
        if isinstance(value, tuple):
            return value
        try:
            lo, hi = (float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"takes LOW,HIGH (e.g. 0,4095), got {value!r}", param, ctx)
        return lo, hi


def fit_on_filter(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    """The ``--fit-on`` values (AND across options) as one :class:`~indexer.core.records.MetadataFilter`,
    or ``None`` for none given."""
    from indexer.core.config import parse_fit_on

    try:
        return parse_fit_on(value)
    except ConfigError as e:
        raise click.BadParameter(str(e).removeprefix("--fit-on "), ctx, param) from e


def normalize_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--normalize``, ``--normalize-eps`` and ``--fit-on``, passed to the command as one
    :class:`~indexer.core.config.NormalizeSpec` named ``normalize``."""
    from indexer.vectors.normalize import KINDS

    @functools.wraps(fn)
    def command(
        *args: Any, normalize_kind: str | None, normalize_eps: float | None, fit_on: Any, **kwargs: Any
    ):
        from indexer.core.config import NormalizeSpec

        spec = NormalizeSpec(kind=normalize_kind, eps=normalize_eps, fit_on=fit_on)
        return fn(*args, normalize=spec, **kwargs)

    return option_group(
        click.option(
            "--normalize",
            "normalize_kind",
            type=click.Choice(KINDS),
            default=None,
            help="Fit a centering or PCA whitening on this first build's vectors; stored with the index and "
            "applied to every stored and query vector [default: none; an existing index: its own].",
        ),
        click.option(
            "--normalize-eps",
            "normalize_eps",
            type=click.FloatRange(min=0.0),
            default=None,
            help="Whitening ridge added to each covariance eigenvalue, as a fraction of the mean eigenvalue "
            "of the directions the fit set spans [default: 1].",
        ),
        click.option(
            "--fit-on",
            "fit_on",
            multiple=True,
            callback=fit_on_filter,
            help="Fit the normalisation on a subset only: FIELD=VALUE[,VALUE] (well, site, plate, channel, "
            "z, row, column, source, tag=KEY=VALUE); repeat to AND fields.",
        ),
    )(command)
