"""The client of the query server: ``mae-search query --server URL``."""

from __future__ import annotations

import base64
import json

from indexer.core.errors import ConfigError, DecodeError, StoreUnavailableError
from retriever.search import QueryOptions


def query_server(url: str, files: list, options: QueryOptions, timeout: float = 60.0) -> list[list[dict]]:
    """Client side of ``mae-search query --server URL``: post the files to ``/query/batch``."""
    import urllib.error
    import urllib.request
    from dataclasses import asdict

    where = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(options.where).items()
        if v not in ((), None)
    }
    body = {
        "images": [base64.b64encode(open(f, "rb").read()).decode() for f in files],
        "k": options.k,
        "where": where,
        "max_distance": options.max_distance,
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/query/batch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())["results"]
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        # One exit-code rule: a request the server refused as malformed is a usage error (exit 2); an
        # image it could not use or a server-side failure (5xx, a store down) is a runtime one (exit 1).
        if e.code >= 500:
            raise StoreUnavailableError(f"query server answered {e.code}: {detail}") from e
        if '"image ' in detail:
            raise DecodeError(f"query server answered {e.code}: {detail}") from e
        raise ConfigError(f"query server answered {e.code}: {detail}") from e
    except urllib.error.URLError as e:
        raise StoreUnavailableError(f"cannot reach query server {url}: {e.reason}") from e
