"""Server memory under load: 8 clients for 10 minutes against a real `mae-search serve`; RSS must stay
within 10 % of its level after warm-up.

    python bench/bench_server_rss.py --minutes 10 --clients 8

Builds a small index of the shipped real images with the shipped tiny model, starts the server as a
subprocess on 127.0.0.1 and runs the mixed load of ``bench/server_load.py`` (uploads, id queries,
batches, health checks, bad requests, and the explorer's plate map, records and thumbnails).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REAL_DIR, REPO  # noqa: E402
from bench.server_load import run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=60.0, help="Seconds before the RSS baseline.")
    args = ap.parse_args()
    from click.testing import CliRunner

    from indexer.cli import main as index_main
    from indexer.stores.faiss.store import FaissStore
    from tests.support.serve import start_serve

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-rss-"))
    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"
    r = CliRunner().invoke(
        index_main,
        ["build", str(REAL_DIR), "--index", str(tmp / "idx"), "--model", str(model), "--device", "cpu",
         "--no-progress"],
    )  # fmt: skip
    if r.exit_code != 0:
        raise SystemExit(r.output)
    ids = [int(i) for i in FaissStore(tmp / "idx", read_only=True).ids()]
    blobs = [p.read_bytes() for p in sorted(REAL_DIR.glob("*.tif"))]
    proc, port = start_serve(tmp / "idx")
    try:
        res = run_load(port, proc.pid, args.minutes * 60, blobs, ids, args.clients, args.warmup, 5.0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mb = [round(r / 2**20, 1) for _, r in res["samples"]]
    print(f"requests {res['requests']} ({res['requests'] / res['seconds']:.0f}/s), unexpected statuses "
          f"{res['errors']}, clients {args.clients}, {args.minutes:g} min")  # fmt: skip
    print(f"RSS after {args.warmup:g} s warm-up: first {mb[int(args.warmup // 5)]} MB, min "
          f"{res['rss_min'] / 2**20:.1f} MB, max {res['rss_max'] / 2**20:.1f} MB, growth {res['growth']:+.1%}")  # fmt: skip
    print("RSS samples (MB, every 5 s):", mb)
    for line in res["unexpected"]:
        print("unexpected:", line)


if __name__ == "__main__":
    main()
