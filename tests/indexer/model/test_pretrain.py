import json

import numpy as np
import pytest
import torch

from indexer.core.config import ModelConfig, SourceConfig
from indexer.core.errors import ConfigError
from indexer.model.encoder import ViTMAEEncoder
from indexer.model.pretrain import PretrainConfig, pretrain, random_crop, split_holdout


def _config(data, out, epochs, **kw):
    return PretrainConfig(
        sources=SourceConfig(paths=(data,)),
        out_dir=out,
        init="test",
        epochs=epochs,
        batch_size=4,
        steps_per_epoch=3,
        warmup_epochs=0.5,
        lr=1e-3,
        **kw,
    )


@pytest.fixture(scope="module")
def data_dir(real_images):
    return real_images[0].parent


def test_resume_continues_the_same_loss_curve(data_dir, tmp_path):
    straight = pretrain(_config(data_dir, tmp_path / "a", epochs=3))

    def crash_in_epoch_2(p):
        if p["epoch"] == 2 and p["step"] == 2:
            raise KeyboardInterrupt  # the process dies mid-epoch; epoch 1's checkpoint remains

    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(data_dir, tmp_path / "b", epochs=3), progress=crash_in_epoch_2)
    assert len(json.loads((tmp_path / "b" / "checkpoint" / "history.json").read_text())) == 2
    resumed = pretrain(_config(data_dir, tmp_path / "b", epochs=3))
    a = [(h["train_loss"], h["heldout_loss"]) for h in straight["history"]]
    b = [(h["train_loss"], h["heldout_loss"]) for h in resumed["history"]]
    assert len(a) == len(b) == 4  # epoch 0 (before training) + 3
    np.testing.assert_allclose(np.array(b[1:], dtype=float), np.array(a[1:], dtype=float), rtol=1e-5)


def test_output_folder_loads_for_indexing_and_loss_drops(data_dir, tmp_path):
    log = pretrain(_config(data_dir, tmp_path / "m", epochs=4))
    h = log["history"]
    assert h[-1]["heldout_loss"] < h[0]["heldout_loss"]
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "training_log.json",
        "loss_curve.png",
    ):
        assert (tmp_path / "m" / name).exists(), name
    assert not list((tmp_path / "m").glob("*.bin"))
    enc = ViTMAEEncoder(ModelConfig(name=str(tmp_path / "m"), device="cpu"))
    assert enc.dim == 32 and enc.default_preprocess().image_mean == (0.5, 0.5, 0.5)
    saved = json.loads((tmp_path / "m" / "training_log.json").read_text())
    assert saved["history"] == json.loads(json.dumps(h))


def test_random_crop_shapes_and_determinism():
    unit = torch.rand(520, 696)
    a = random_crop(unit, 64, np.random.default_rng(1))
    b = random_crop(unit, 64, np.random.default_rng(1))
    assert a.shape == (64, 64) and torch.equal(a, b)
    train, hold = split_holdout(20, 0.1, seed=0)
    assert len(hold) == 2 and not set(train) & set(hold) and len(train) + len(hold) == 20


def test_config_validation(data_dir, tmp_path):
    with pytest.raises(ConfigError):
        _config(data_dir, tmp_path, epochs=1, mask_ratio=1.0)
