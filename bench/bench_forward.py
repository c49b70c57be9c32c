"""How fast can the fp32 forward pass alone go on this CPU? One ViT-MAE shape, several ways to run it.

The build cannot be faster than its model (``bench_build.py`` prints that ceiling); this tries what might
make the model itself faster in fp32, each on the same random batch, best of ``--repeats``:

- ``eager`` and ``sdpa`` attention (transformers' default is sdpa);
- ``torch.compile`` (inductor), and with inductor's weight freezing;
- Linear layers through oneDNN instead of MKL (``torch.utils.mkldnn.to_mkldnn``).

    python bench/bench_forward.py --model small --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_build import make_model  # noqa: E402


def images_per_second(model, batch: int, images: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` forward throughput on one random batch, unmasked and unshuffled; and the
    seconds of the first batch (the compile, for a compiled model)."""
    x = torch.randn(batch, 3, 224, 224)
    patches = (224 // model.config.patch_size) ** 2
    noise = torch.arange(patches, dtype=torch.float32).expand(batch, patches)
    rounds = max(1, images // batch)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(pixel_values=x, noise=noise)  # warm-up (and the compile)
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(rounds):
                model(pixel_values=x, noise=noise)
            best = min(best, time.perf_counter() - t0)
    return rounds * batch / best, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["test", "tiny", "small", "base"], default="small")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--images", type=int, default=64, help="images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import ViTMAEModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the checkpoint's decoder weights are unused here, by design
    folder = make_model(args.model, Path(tempfile.mkdtemp(prefix="mae-forward-")) / "model")

    def load(attn: str = "sdpa"):
        return ViTMAEModel.from_pretrained(folder, mask_ratio=0.0, attn_implementation=attn).eval()

    def frozen():
        import torch._inductor.config as inductor

        # Read when the graph compiles, at the first call; later variants are not compiled.
        inductor.freezing = True
        return torch.compile(load())

    variants = {
        "eager attention": lambda: load("eager"),
        "sdpa attention (default)": load,
        "torch.compile": lambda: torch.compile(load()),
        "torch.compile, inductor freezing": frozen,
        "Linear via oneDNN (to_mkldnn)": lambda: torch.utils.mkldnn.to_mkldnn(load()),
    }
    print(f"fp32 forward, model={args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")  # fmt: skip
    base = None
    for name, make in variants.items():
        rate, first = images_per_second(make(), args.batch_size, args.images, args.repeats)
        base = base or rate
        print(f"{name:34s} {rate:6.1f} images/s = {rate / base:.2f}x eager   (first batch {first:.1f} s)")


if __name__ == "__main__":
    main()
