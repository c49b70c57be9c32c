"""The model's forward runs with the process's full torch thread pool, whatever the decode workers do.

A decode worker sets torch to one thread. torch keeps that count as a process-wide default that a
thread reads on first use, so a worker that gets there before the model thread's first parallel op
used to leave the forward on one core (issue 19: a 2-core fp32 build at half the model-only rate).
Each case runs in a fresh interpreter, since a thread's count is settled once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from indexer.ingest.local import build_index
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore

model, data, index = sys.argv[1:4]
encoder = ViTMAEEncoder(ModelConfig(name=model, device="cpu", precision="fp32"))
seen = []
embed = encoder.embed
def spy(pixels):
    seen.append(torch.get_num_threads())
    return embed(pixels)
encoder.embed = spy
config = BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=Path(index), model=encoder.config,
                     batch_size=2, workers=2)
store = FaissStore(Path(index), dim=encoder.dim)
build_index(config, [store], encoder=encoder)
store.close()
print(json.dumps(seen))
"""


def _default_threads() -> int:
    """torch's thread count in a fresh interpreter (what the forward should get)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def test_the_forward_runs_with_the_full_thread_pool(tiny_model_dir, real_subset, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tiny_model_dir), str(real_subset), str(tmp_path / "idx")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seen) == 3  # 6 images, batches of 2
    assert seen == [_default_threads()] * 3
