"""On a CPU, decoding and the forward take turns: a decode worker beside a forward that has every core
stalls the forward's threads at each barrier (`python -m bench run build` measures it)."""

from __future__ import annotations

import threading
import time

import indexer.ingest.local as local
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
from indexer.ingest.local import build_index
from indexer.ingest.turns import Turns
from indexer.model.encoder import load_encoder
from indexer.stores.faiss.store import FaissStore


def _intervals(monkeypatch, encoder):
    """Record when each decode (each plane a worker prepares) and each forward ran, as (start, end) pairs."""
    decodes, forwards, lock = [], [], threading.Lock()
    real_prepare, real_embed = local.prepare_planes, encoder.embed

    def prepare(*args, **kwargs):
        steps = real_prepare(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            plane = next(steps, None)
            if plane is None:
                return
            with lock:
                decodes.append((t0, time.perf_counter()))
            yield plane

    def embed(pixels):
        t0 = time.perf_counter()
        out = real_embed(pixels)
        forwards.append((t0, time.perf_counter()))
        return out

    monkeypatch.setattr(local, "prepare_planes", prepare)
    monkeypatch.setattr(encoder, "embed", embed)
    return decodes, forwards


def _overlaps(decodes, forwards) -> int:
    return sum(1 for d0, d1 in decodes for f0, f1 in forwards if d0 < f1 and f0 < d1)


def test_a_cpu_build_never_decodes_while_its_forward_runs(real_images, tmp_path, tiny_model_dir, monkeypatch):
    """Before: the decode window kept both workers decoding through every forward pass. 20 images, batches
    of 2, 2 workers: each decode is checked against each forward."""
    data = tmp_path / "data" / "BBBC006_v1_images_z_16"
    data.mkdir(parents=True)
    for p in real_images:
        (data / p.name).write_bytes(p.read_bytes())
    encoder = load_encoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    decodes, forwards = _intervals(monkeypatch, encoder)
    overlaps = {}
    for during in (None, True):
        decodes.clear(), forwards.clear()
        idx = tmp_path / f"idx-{during}"
        cfg = BuildConfig(sources=SourceConfig(paths=(data.parent,)), index_dir=idx, model=encoder.config,
                          batch_size=2, workers=2, progress=False, decode_during_forward=during)  # fmt: skip
        summary = build_index(cfg, [FaissStore(idx, dim=encoder.dim)], encoder=encoder)
        assert summary.indexed == 20 and len(forwards) == 10 and len(decodes) == 20
        overlaps[during] = _overlaps(decodes, forwards)
    assert overlaps[None] == 0, overlaps  # the CPU default; before, as with decode_during_forward=True
    with (
        FaissStore(tmp_path / "idx-None", read_only=True) as a,
        FaissStore(tmp_path / "idx-True", read_only=True) as b,
    ):
        ids = a.ids()
        assert (b.ids() == ids).all() and (a.get_vectors(ids) == b.get_vectors(ids)).all()


def test_a_forward_waits_for_the_decodes_in_progress_and_holds_new_ones():
    turns = Turns(enabled=True)
    order: list[str] = []
    decoding, release = threading.Event(), threading.Event()

    def decode():
        with turns.decode():
            order.append("decode starts")
            decoding.set()
            release.wait(5)
            order.append("decode ends")

    first = threading.Thread(target=decode)
    first.start()
    decoding.wait(5)

    def forward():
        with turns.forward():
            order.append("forward starts")
            time.sleep(0.05)
            order.append("forward ends")

    f = threading.Thread(target=forward)
    f.start()
    time.sleep(0.05)

    def second_decode():
        with turns.decode():
            order.append("second decode")

    second = threading.Thread(target=second_decode)
    second.start()
    time.sleep(0.05)
    assert order == ["decode starts"]  # the forward waits for the decode; the new decode for the forward
    release.set()
    for t in (first, f, second):
        t.join(5)
    assert order == ["decode starts", "decode ends", "forward starts", "forward ends", "second decode"]


def _overlap(turns: Turns) -> list[str]:
    """A forward and a decode in two threads, each waiting (up to 1 s) for the other to be inside its
    turn before it ends: what happened, in order."""
    order: list[str] = []
    inside = {"forward": threading.Event(), "decode": threading.Event()}

    def run(name: str, other: str, turn) -> None:
        with turn():
            order.append(f"{name} starts")
            inside[name].set()
            order.append(f"{name} saw {other}" if inside[other].wait(1) else f"{name} alone")
            order.append(f"{name} ends")  # inside the turn: the next one cannot start before this

    threads = [
        threading.Thread(target=run, args=("forward", "decode", turns.forward)),
        threading.Thread(target=run, args=("decode", "forward", turns.decode)),
    ]
    threads[0].start()
    inside["forward"].wait(5)
    threads[1].start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), order
    return order


def test_without_turns_both_run_at_once():
    """On a GPU neither waits for the other: the decode starts while the forward is inside its turn,
    and both finish."""
    order = _overlap(Turns(enabled=False))
    assert order[:2] == ["forward starts", "decode starts"], order
    assert {"forward saw decode", "decode saw forward", "forward ends", "decode ends"} <= set(order), order
    # With turns, the same two threads take turns: the forward finds itself alone, then the decode.
    taking_turns = _overlap(Turns(enabled=True))
    assert taking_turns == [
        "forward starts",
        "forward alone",
        "forward ends",
        "decode starts",
        "decode saw forward",
        "decode ends",
    ], taking_turns
