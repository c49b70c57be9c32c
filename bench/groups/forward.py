"""How fast can the fp32 forward pass alone go on this CPU? One ViT-MAE shape, several ways to run it.

The build cannot be faster than its model (the ``build`` group measures that ceiling); this tries what
might make the model itself faster in fp32, each on the same random batch, best of ``repeats``:

- ``eager`` and ``sdpa`` attention (transformers' default is sdpa);
- ``torch.compile`` (inductor), and with inductor's weight freezing (``compile=false`` skips both);
- Linear layers through oneDNN instead of MKL (``torch.utils.mkldnn.to_mkldnn``).

    python -m bench run forward --set model=small --set batch_size=16
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.groups.build import make_model
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``images`` per timed run, best of ``repeats``; ``compile``: also the two torch.compile ways."""

    model: str = "small"
    batch_size: int = 16
    images: int = 64
    repeats: int = 3
    compile: bool = True


QUICK = Params(model="tiny", batch_size=4, images=8, repeats=1, compile=False)


def images_per_second(model, batch: int, images: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` forward throughput on one random batch, unmasked and unshuffled; and the
    seconds of the first batch (the compile, for a compiled model)."""
    import torch

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


def run(p: Params) -> Iterator[Result]:
    """Images/s of each way (and its ratio to eager attention), and its first batch's seconds."""
    import torch
    import torch.utils.mkldnn  # not loaded by ``import torch`` (torch.compile happened to load it)
    from transformers import ViTMAEModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the checkpoint's decoder weights are unused here, by design
    folder = make_model(p.model, Path(tempfile.mkdtemp(prefix="mae-forward-")) / "model")

    def load(attn: str = "sdpa"):
        return ViTMAEModel.from_pretrained(folder, mask_ratio=0.0, attn_implementation=attn).eval()

    def frozen():
        import torch._inductor.config as inductor

        # Read when the graph compiles, at the first call; later variants are not compiled.
        inductor.freezing = True
        return torch.compile(load())

    variants = {"eager attention": lambda: load("eager"), "sdpa attention (default)": load}
    if p.compile:
        variants |= {
            "torch.compile": lambda: torch.compile(load()),
            "torch.compile, inductor freezing": frozen,
        }
    variants["Linear via oneDNN (to_mkldnn)"] = lambda: torch.utils.mkldnn.to_mkldnn(load())
    threads = {"torch_threads": torch.get_num_threads()}
    base = None
    for name, make in variants.items():
        rate, first = images_per_second(make(), p.batch_size, p.images, p.repeats)
        base = base or rate
        yield Result(name, "throughput", rate, "img/s", threads)
        yield Result(name, "vs_eager", rate / base, "x", threads)
        yield Result(name, "first_batch", first, "s", threads)
