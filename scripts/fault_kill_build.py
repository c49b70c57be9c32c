#!/usr/bin/env python
"""Fault injection: kill -9 `mae-index build` at random moments, re-run, and check nothing is lost.

Each round starts a real build process and SIGKILLs it after a random delay (seeded). After the rounds
a final build runs to completion. The check: the FAISS index (and Redis with --redis-url) holds every
decodable image exactly once (ids = content hashes of the files), nothing else, and, with Redis,
`mae-index verify` passes.

    python scripts/fault_kill_build.py DATA --model MODEL [--rounds 8] [--redis-url URL] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.core.config import SourceConfig  # noqa: E402
from indexer.core.errors import DecodeError  # noqa: E402
from indexer.images.decode import content_id, decode_tiff  # noqa: E402
from indexer.images.sources import iter_sources  # noqa: E402
from indexer.stores.faiss.store import FaissStore  # noqa: E402


def expected_ids(data: list[Path]) -> set[int]:
    """Content ids of every image the build should keep (decodable ones, duplicates counted once)."""
    ids = set()
    for item in iter_sources(SourceConfig(paths=tuple(data))):
        raw = item.read()
        try:
            decode_tiff(raw)
        except DecodeError:
            continue
        ids.add(content_id(raw))
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max-delay", type=float, default=8.0, help="Longest wait before a kill, seconds.")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--redis-index", default="crashtest")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    index = args.index or Path(tempfile.mkdtemp(prefix="mae-crash-")) / "idx"
    exe = Path(sys.executable).parent / "mae-index"
    cmd = [str(exe), "build", *map(str, args.data), "--index", str(index), "--model", args.model,
           "--batch-size", "4", "--checkpoint-every", "16", "--no-progress", "--format", "json"]  # fmt: skip
    if args.redis_url:
        cmd += ["--redis-url", args.redis_url, "--redis-index", args.redis_index]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for r in range(args.rounds):
        delay = rnd.uniform(0.5, args.max_delay)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            proc.wait(timeout=delay)
            print(f"round {r}: finished before the kill at {delay:.1f} s")
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            count = FaissStore(index, read_only=True).count() if (index / "shards").exists() else 0
            print(f"round {r}: killed after {delay:.1f} s; index holds {count}")
    final = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if final.returncode not in (0,):
        print(final.stderr, file=sys.stderr)
        return 1
    summary = json.loads(final.stdout)
    want = expected_ids(args.data)
    store = FaissStore(index, read_only=True)
    have = store.ids().tolist()
    lost = want - set(have)
    extra = set(have) - want
    dupes = len(have) - len(set(have))
    result = {"kills": kills, "rounds": args.rounds, "final": summary, "expected": len(want), "faiss": len(have),
              "lost": len(lost), "extra": len(extra), "duplicates": dupes}  # fmt: skip
    ok = not lost and not extra and not dupes
    if args.redis_url:
        v = subprocess.run([str(exe), "verify", "--index", str(index), "--redis-url", args.redis_url,
                            "--redis-index", args.redis_index, "--format", "json"], capture_output=True, text=True)  # fmt: skip
        result["verify"] = json.loads(v.stdout) if v.stdout else v.stderr
        ok = ok and v.returncode == 0
    result["ok"] = ok
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"seconds: {time.time() - t0:.0f}")
    sys.exit(rc)
