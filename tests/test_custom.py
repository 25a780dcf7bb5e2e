"""Networks of one's own: ``model=custom`` by import path through the CLI, and the estimator's
``discriminator=`` / ``generator=`` (modules or import paths); the contract is checked at start-up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import ssgan
from ssgan.checkpoint import load_checkpoint
from ssgan.cli import main
from ssgan.config import ConfigError
from ssgan.rundir import RunDirError
from tests.conftest import TINY_OVERRIDES
from tests.custom_nets import FailsLater, SmallCNN, SmallGenerator

CUSTOM = ["model=custom", "model.discriminator._target_=tests.custom_nets.SmallCNN",
          "+model.discriminator.width=8", "model.generator._target_=tests.custom_nets.SmallGenerator"]
TINY = [o for o in TINY_OVERRIDES if not o.startswith(("model.", "train.epochs"))] + ["train.epochs=2"]


def test_a_user_defined_cnn_trains_on_digits_through_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", "--run-dir", str(run_dir), *TINY, *CUSTOM]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test error:")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["config"]["model"]["discriminator"] == {"_target_": "tests.custom_nets.SmallCNN", "width": 8}
    run = ssgan.load(run_dir)  # rebuilt from the import paths in its config
    assert isinstance(run.discriminator_, SmallCNN) and run.discriminator_.convs[1].v.shape[0] == 8
    # the weight-normalised layers of one's own modules got their data-dependent init (scale no longer 1)
    assert not torch.allclose(run.discriminator_.convs[1].g, torch.ones(8))
    assert main(["evaluate", str(run_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"test error: {result['test_error']:.2f} %"


@pytest.mark.parametrize("change, message", [
    (["model.discriminator._target_=tests.custom_nets.LogitsOnly"], "must return (logits (B, K), features (B, F))"),
    (["model.discriminator._target_=tests.custom_nets.Nowhere"], "cannot build tests.custom_nets.Nowhere"),
    (["+model.discriminator.depth=3"], "unexpected keyword argument 'depth'"),
    (["model.discriminator._target_=tests.custom_nets.NoParameters"], "the discriminator has no parameters to train"),
])
def test_a_broken_contract_is_one_line_and_exit_2(change, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY, *CUSTOM, *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_network_that_fails_mid_training_is_one_line_exit_2_and_keeps_the_last_checkpoint(tmp_path, capsys):
    """A discriminator of one's own that raises in epoch 2 (after the checkpoint of epoch 1): no traceback but
    one line naming the failure and the checkpoint kept, exit 2; the estimator raises the same ConfigError."""
    run_dir = tmp_path / "run"
    failing = ["model.discriminator._target_=tests.custom_nets.FailsLater", "+model.discriminator.fail_after=11"]
    assert main(["fit", "--run-dir", str(run_dir), *TINY, *CUSTOM, *failing, "train.epochs=3",
                 "train.checkpoint_every=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "boom at call 11" in err and "Traceback" not in err, err
    assert f"the last good checkpoint is {run_dir / 'checkpoint.pt'}" in err, err
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1 and not (run_dir / "result.json").exists()

    x, y = load_digits(return_X_y=True)
    estimator = ssgan.SSGANClassifier(recipe="digits", epochs=2, iters_per_epoch=3, image_shape=(1, 8, 8),
                                      device="cpu", discriminator=FailsLater((1, 8, 8), 10, width=8, fail_after=6),
                                      generator=SmallGenerator((1, 8, 8), 100))
    with pytest.raises(ConfigError, match="boom at call 6"):
        estimator.fit(x, np.where(np.arange(len(y)) < 200, y, -1))


def test_model_custom_without_networks_is_refused(capsys):
    assert main(["fit", "model=custom"]) == 2
    assert "model.discriminator" in capsys.readouterr().err
    assert main(["fit", "+model.discriminator.width=3"]) == 2  # a spec without model=custom would be ignored
    assert "they need model=custom" in capsys.readouterr().err


def test_the_estimator_trains_modules_and_import_paths(tmp_path):
    x, y = load_digits(return_X_y=True)
    y_semi = np.where(np.arange(len(y)) < 200, y, -1)
    common = dict(recipe="digits", epochs=1, iters_per_epoch=3, image_shape=(1, 8, 8), device="cpu")
    discriminator, generator = SmallCNN((1, 8, 8), 10, width=8), SmallGenerator((1, 8, 8), 100)
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    by_module = ssgan.SSGANClassifier(**common, discriminator=discriminator, generator=generator).fit(x, y_semi)
    assert isinstance(by_module.discriminator_, SmallCNN) and by_module.predict_proba(x[:3]).shape == (3, 10)
    assert all(torch.equal(before[k], v) for k, v in discriminator.state_dict().items())  # copies trained
    by_path = ssgan.SSGANClassifier(**common, discriminator="tests.custom_nets.SmallCNN",
                                    generator="tests.custom_nets.SmallGenerator").fit(x, y_semi)
    by_path.save(tmp_path / "custom.pt")
    loaded = ssgan.SSGANClassifier.load(tmp_path / "custom.pt")
    np.testing.assert_allclose(loaded.predict_proba(x[:5]), by_path.predict_proba(x[:5]), atol=1e-6)
    with pytest.raises(RunDirError, match="cannot save parameter discriminator"):
        by_module.save(tmp_path / "modules.pt")
