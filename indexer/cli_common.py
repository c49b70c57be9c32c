"""What the three click CLIs share: exit codes, logging to stderr, and environment-backed options.

Exit codes: 0 success, 1 runtime failure (any :class:`MaeError`), 2 usage or configuration error.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from indexer.errors import ConfigError, MaeError

REDIS_URL_ENV = "MAE_REDIS_URL"


def setup_logging(verbose: int) -> None:
    """Log to stderr (stdout stays clean for ``--format json``); quiet the libraries' progress bars."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
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
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except MaeError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def redis_url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--redis-url`` (or ``MAE_REDIS_URL``); the value is never echoed."""
    return click.option(
        "--redis-url",
        envvar=REDIS_URL_ENV,
        default=None,
        metavar="URL",
        help=f"Redis with vector search (redis:// or rediss://, user:password allowed); env {REDIS_URL_ENV}.",
    )(fn)


def faiss_search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--nprobe`` and ``--ef-search``: override the FAISS mirror's search parameters (from its manifest)."""
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
