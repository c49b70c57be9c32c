import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.core.config import ModelConfig, PreprocessConfig
from indexer.core.errors import ModelLoadError
from indexer.images.decode import decode_tiff
from indexer.model.encoder import (
    ViTMAEEncoder,
    native_bf16,
    pool_tokens,
    resolve_precision,
    resolve_preprocess,
)
from indexer.model.preprocess import preprocess_image


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    # fp32: the reference below is the stock fp32 model (bf16 is compared on its own further down)
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu", precision="fp32"))


def _inputs(encoder, real_images, n):
    pre = resolve_preprocess(encoder, PreprocessConfig())
    return torch.stack([preprocess_image(decode_tiff(p.read_bytes()), pre) for p in real_images[:n]])


def test_matches_hugging_face_reference(encoder, tiny_model_dir, real_images):
    """Reference: ViTImageProcessor normalisation + stock ViTMAEModel (mask_ratio 0, its own random
    noise, i.e. shuffled patches) + mean pool. Mean pooling does not depend on patch order."""
    from transformers import ViTImageProcessorPil, ViTMAEModel

    from indexer.model.preprocess import normalise_intensity

    pre = resolve_preprocess(encoder, PreprocessConfig())
    image = decode_tiff(real_images[0].read_bytes())
    unit = normalise_intensity(torch.from_numpy(image.astype(np.float32))[None], pre.intensity)
    small = torch.nn.functional.interpolate(unit[None], size=pre.image_size, mode="bilinear", antialias=True)[
        0
    ]
    rgb = small.expand(3, -1, -1).numpy()
    proc = ViTImageProcessorPil.from_pretrained(str(tiny_model_dir), do_resize=False, do_rescale=False)
    pixel_values = proc(images=rgb, return_tensors="pt", input_data_format="channels_first")["pixel_values"]
    ref_model = ViTMAEModel.from_pretrained(str(tiny_model_dir), mask_ratio=0.0).eval()
    with torch.no_grad():
        tokens = ref_model(pixel_values=pixel_values).last_hidden_state
    ref = tokens[:, 1:].mean(1)
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()[0]
    ours = encoder.embed(pixel_values)[0]
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
    # and our own preprocessing produces the same input
    ours_full = encoder.embed(preprocess_image(image, pre)[None])[0]
    assert np.abs(ours_full - ref).max() / np.abs(ref).max() < 1e-4


def test_precision_auto_is_bf16_only_where_native():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto")[0] == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision(cpu, "fp32") == ("fp32", "as asked")
    assert resolve_precision(cpu, "bf16") == ("bf16", "as asked")


def test_precision_auto_on_a_cpu_takes_bf16_only_for_a_wide_model(monkeypatch):
    """Before: ``auto`` was bf16 wherever the CPU had native bf16, whatever the model; the shipped tiny
    model (hidden 192) then built ~3x slower than in fp32 (37 s against 12 s for 1,000 planes), and
    nothing said why bf16 was chosen. Now a CPU takes bf16 only from hidden size 384 (ViT-S) up, and the
    encoder says which rule picked its precision."""
    from indexer.model import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "native_bf16", lambda device: True)  # a chip with AVX512-BF16
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto", hidden_size=192)[0] == "fp32"
    assert resolve_precision(cpu, "auto", hidden_size=384)[0] == "bf16"
    assert resolve_precision(cpu, "auto", hidden_size=768)[0] == "bf16"
    assert resolve_precision(torch.device("cuda"), "auto", hidden_size=192)[0] == "bf16"  # a GPU: always
    shipped = str(Path(__file__).resolve().parents[3] / "examples" / "models" / "mae-tiny-bbbc006")
    tiny = ViTMAEEncoder(ModelConfig(name=shipped, device="cpu", precision="auto"))
    assert tiny.precision == "fp32" and tiny.info["precision"] == "fp32"
    assert tiny.runtime == (
        "cpu fp32 (auto: hidden size 192 < 384, bf16 is slower than fp32 on a CPU for a model this small)"
    )
    forced = ViTMAEEncoder(ModelConfig(name=shipped, device="cpu", precision="bf16"))
    assert forced.precision == "bf16" and forced.runtime == "cpu bf16"


def test_precision_auto_is_fp32_where_torch_runs_without_avx512():
    """A CPU whose kernels torch runs at AVX2 (an AVX2-only CPU, or one capped with ATEN_CPU_CAPABILITY)
    has no native bf16 path, whatever cpuinfo says of the chip: bf16 there would be emulated, slower than
    fp32. Checked in a fresh process, since torch reads the cap once, when loaded."""
    code = (
        "import torch; from indexer.model.encoder import native_bf16, resolve_precision; "
        "cpu = torch.device('cpu'); "
        "print(torch.backends.cpu.get_cpu_capability(), native_bf16(cpu), resolve_precision(cpu, 'auto'))"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[:3] == ["AVX2", "False", "('fp32',"]


def test_bf16_vectors_match_fp32_and_do_not_depend_on_batch_size(encoder, tiny_model_dir, real_images):
    bf16 = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu", precision="bf16"))
    assert bf16.precision == "bf16" and bf16.info["precision"] == "bf16"
    assert bf16.info["fingerprint"] == encoder.info["fingerprint"]  # same weights: same index identity
    x = _inputs(encoder, real_images, 20)
    full = bf16.embed(x)
    cosine = (full * encoder.embed(x)).sum(axis=1)
    assert cosine.min() > 0.9999
    singles = np.concatenate([bf16.embed(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(singles, full, rtol=0, atol=1e-5)
    # nearest neighbours (the thing an index is for) are unchanged
    fp = encoder.embed(x)
    assert (np.argsort(-(full @ full.T), axis=1)[:, :5] == np.argsort(-(fp @ fp.T), axis=1)[:, :5]).all()


def test_compiled_model_equals_eager_and_pads_a_short_batch(encoder, tiny_model_dir, real_images):
    compiled = ViTMAEEncoder(
        ModelConfig(name=str(tiny_model_dir), device="cpu", precision="fp32", compile=True)
    )
    x = _inputs(encoder, real_images, 6)
    np.testing.assert_allclose(compiled.embed(x[:4]), encoder.embed(x[:4]), rtol=0, atol=1e-5)
    short = compiled.embed(x[4:])  # padded to the batch of 4 already compiled, then cut back
    assert short.shape == (2, encoder.dim) and compiled._pad_to == 4
    np.testing.assert_allclose(short, encoder.embed(x[4:]), rtol=0, atol=1e-5)


def test_deterministic_across_calls_and_batch_sizes(encoder, real_images):
    x = _inputs(encoder, real_images * 2, 32)
    full = encoder.embed(x)
    assert np.array_equal(full, encoder.embed(x))
    for bs in (1, 7):
        parts = np.concatenate([encoder.embed(x[i : i + bs]) for i in range(0, len(x), bs)])
        np.testing.assert_allclose(parts, full, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-6)
    assert full.dtype == np.float32 and full.shape == (32, encoder.dim)


def test_patch_order_is_kept(encoder, real_images):
    """With identity noise, patch token i comes from patch i: CLS pooling differs from mean pooling and
    the token count equals the patch count (no masking)."""
    x = _inputs(encoder, real_images, 1)
    n = (64 // 16) ** 2
    noise = torch.arange(n, dtype=torch.float32)[None]
    out = encoder.model(pixel_values=x, noise=noise)
    assert out.last_hidden_state.shape[1] == n + 1
    assert torch.equal(out.ids_restore[0], torch.arange(n))


def test_pooling_variants():
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [100.0, 1.0]]])
    assert pool_tokens(tokens, "cls").tolist() == [[9.0, 9.0]]
    assert pool_tokens(tokens, "mean").tolist() == [[26.5, 2.5]]
    # Feature 0 over patches: 1, 2, 3, 100 -> Q1 = 1.75, Q3 = 27.25 -> keeps 2, 3 -> IQM 2.5.
    # Feature 1: 4, 3, 2, 1 -> Q1 = 1.75, Q3 = 3.25 -> keeps 3, 2 -> IQM 2.5.
    assert pool_tokens(tokens, "iqm").tolist() == [[2.5, 2.5]]


def test_constant_image_embeds_finite(encoder):
    pre = resolve_preprocess(encoder, PreprocessConfig())
    v = encoder.embed(preprocess_image(np.full((520, 696), 700, np.uint16), pre)[None])
    assert np.isfinite(v).all()


def test_keep_aspect_uses_interpolated_positions(encoder, real_images):
    pre = resolve_preprocess(encoder, PreprocessConfig(resize="keep-aspect"))
    x = preprocess_image(decode_tiff(real_images[0].read_bytes()), pre)
    assert x.shape[-2] == 64 and x.shape[-1] == 80
    assert encoder.embed(x[None]).shape == (1, encoder.dim)


def test_offline_hub_id_fails_fast_with_a_hint():
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="--model PATH") as e:
        ViTMAEEncoder(ModelConfig(name="facebook/vit-mae-base", device="cpu"))
    assert time.perf_counter() - t0 < 10
    assert "\n" not in str(e.value)


def test_folder_without_weights_and_wrong_family(tmp_path):
    from transformers import ViTConfig, ViTModel

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="folder"):
        ViTMAEEncoder(ModelConfig(name=str(tmp_path / "empty"), device="cpu"))
    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelLoadError):
        ViTMAEEncoder(ModelConfig(name=str(tmp_path / "vit"), device="cpu"))


def test_info_fingerprint_is_content_based(encoder, tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    other = ViTMAEEncoder(ModelConfig(name=str(copy), device="cpu"))
    assert other.info["fingerprint"] == encoder.info["fingerprint"]
    assert encoder.info["family"] == "vit_mae"


def test_pickle_only_checkpoint_is_refused(tiny_model_dir, tmp_path):
    """Weights load from safetensors only: a folder with just pytorch_model.bin (pickle) is refused."""
    import shutil

    from transformers import ViTMAEModel

    folder = tmp_path / "pickled"
    ViTMAEModel.from_pretrained(str(tiny_model_dir)).save_pretrained(folder, safe_serialization=False)
    for p in folder.glob("*.safetensors"):
        p.unlink()
    if not list(folder.glob("*.bin")):
        shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
        import torch

        torch.save(
            ViTMAEModel.from_pretrained(str(tiny_model_dir)).state_dict(), folder / "pytorch_model.bin"
        )
    with pytest.raises(ModelLoadError):
        ViTMAEEncoder(ModelConfig(name=str(folder), device="cpu"))


def _edited_checkpoint(src, dst, config_edit=None, drop=None, truncate=None):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if drop:
        tensors = {k: v for k, v in load_file(weights).items() if drop not in k}
        save_file(tensors, weights, metadata={"format": "pt"})
    if truncate is not None:
        weights.write_bytes(weights.read_bytes()[:truncate])
    if config_edit:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            dict(config_edit=lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1)),
            "missing from the weights",
        ),
        (
            dict(config_edit=lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] - 1)),
            "in the weights but not",
        ),
        (dict(drop="layer.0.attention"), "missing from the weights"),
        (dict(config_edit=lambda c: c.update(intermediate_size=c["intermediate_size"] + 4)), "do not fit"),
        (dict(truncate=0), "do not fit"),
        (dict(truncate=1000), "do not fit"),
    ],
    ids=[
        "more-layers-in-config",
        "fewer-layers-in-config",
        "missing-tensors",
        "mismatched",
        "empty",
        "truncated",
    ],
)
def test_checkpoint_that_does_not_fill_the_model_is_refused(tiny_model_dir, tmp_path, edit, message):
    from safetensors.torch import load_file

    if "drop" in edit:  # the checkpoint's own key names (they carry the pretraining model's prefix)
        keys = list(load_file(tiny_model_dir / "model.safetensors"))
        assert any(edit["drop"] in k for k in keys), keys[:5]
    folder = _edited_checkpoint(tiny_model_dir, tmp_path / "m", **edit)
    with pytest.raises(ModelLoadError, match=message) as e:
        ViTMAEEncoder(ModelConfig(name=str(folder), device="cpu"))
    assert "\n" not in str(e.value)
