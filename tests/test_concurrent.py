"""Seeds trained concurrently (stacked parameters, one vmapped step) against single-seed runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ssgan.cli import main
from ssgan.concurrent import fit_concurrent
from ssgan.config import ConfigError, MethodConfig, ModelConfig
from ssgan.train import fit


def test_two_concurrent_seeds_match_two_single_seed_runs(tiny_config):
    """With the in-network noise off, every random draw (subset, initialisation, data order, z) is the same
    as in the single runs, so the weights agree up to float32 rounding."""
    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  train=replace(tiny_config.train, epochs=2, iters_per_epoch=3))
    concurrent = fit_concurrent(cfg, [0, 1])
    for seed, result in zip([0, 1], concurrent):
        single = fit(replace(cfg, seed=seed))
        assert (result.labeled_indices == single.labeled_indices).all()
        for (name, a), b in zip(result.discriminator.state_dict().items(), single.discriminator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(result.generator.state_dict().values(), single.generator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert result.test_error == single.test_error
    # Different seeds: different subsets and weights.
    assert not (concurrent[0].labeled_indices == concurrent[1].labeled_indices).all()


def test_concurrent_seeds_with_noise_ct_and_options_write_resumable_run_dirs(tiny_config, tmp_path, capsys):
    cfg = replace(tiny_config, method=MethodConfig(fm_norm=1, ct_weight=1.0, label_smoothing=0.1),
                  model=replace(tiny_config.model, virtual_batch_norm=True, minibatch_discrimination=True,
                                mbd_kernels=4, mbd_kernel_dim=3),
                  train=replace(tiny_config.train, sample_grid=True))
    run_dirs = [tmp_path / "s0", tmp_path / "s1"]
    results = fit_concurrent(cfg, [0, 1], run_dirs=run_dirs)
    assert all(0 <= r.test_error <= 100 for r in results)
    for run_dir in run_dirs:
        assert {"checkpoint.pt", "metrics.jsonl", "result.json", "samples.png"} <= {p.name for p in run_dir.iterdir()}
    # A seed of a concurrent run continues as a single-seed run.
    assert main(["fit", "--resume", str(run_dirs[1]), "train.epochs=2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test error:")


@pytest.mark.parametrize("change", [
    {"model": ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8, norm="spectral")},
    {"method": MethodConfig(gradient_penalty=1.0)},
    {"method": MethodConfig(historical_averaging=0.1)},
])
def test_unsupported_options_are_config_errors(tiny_config, change):
    with pytest.raises(ConfigError, match="concurrent seeds do not support"):
        fit_concurrent(replace(tiny_config, **change), [0, 1])


def test_fit_seeds_trains_them_concurrently_when_asked(tmp_path, capsys):
    from tests.conftest import TINY_OVERRIDES

    run_dir = tmp_path / "seeds"
    assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), "train.concurrent_seeds=true",
                 *TINY_OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert "trained concurrently" in out and out.strip().splitlines()[-1].endswith("over 2 seeds (sample std)")
    assert (run_dir / "seed0" / "result.json").is_file() and (run_dir / "seed1" / "result.json").is_file()
    assert (run_dir / "summary.json").is_file()
