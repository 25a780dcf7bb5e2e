"""A run directory is data, never code (docs/security.md): a checkpoint, config, record or plan that names code
(a forged ``model.arch=custom`` spec, its checksum recomputed with the project's own digest) is refused by every
command and by ``ssgan.load`` before anything it names is imported or called; a run of one's own networks loads
when the person running the command names the builders."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

import ssgan
from ssgan import trust
from ssgan.checkpoint import content_digest
from ssgan.cli import main
from ssgan.config import ConfigError
from ssgan.rundir import RunDirError
from tests.conftest import TINY_OVERRIDES

CUSTOM = ["model=custom", "model.discriminator._target_=tests.custom_nets.SmallCNN",
          "+model.discriminator.width=8", "model.generator._target_=tests.custom_nets.SmallGenerator"]
TINY = [o for o in TINY_OVERRIDES if not o.startswith("model.")]


@pytest.fixture(autouse=True)
def nothing_given():
    """Each test starts as a fresh process does: no network spec given yet."""
    trust.forget_given()
    yield
    trust.forget_given()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run of the builtin MLP and one of networks of one's own (tests.custom_nets)."""
    root = tmp_path_factory.mktemp("trust")
    assert main(["fit", "--run-dir", str(root / "mlp"), *TINY_OVERRIDES]) == 0
    assert main(["fit", "--run-dir", str(root / "custom"), *TINY, *CUSTOM]) == 0
    trust.forget_given()
    return root


def _rewrite(path, change) -> None:
    """Change a checkpoint's payload and recompute its checksum as anyone can (checkpoint.content_digest)."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    payload["sha256"] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


def _forge(run_dir, victim) -> None:
    """model.arch=custom with both networks builtins.open(victim, "w"), in the checkpoint, record and config."""
    spec = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}

    def evil(config):
        config["model"].update(arch="custom", discriminator=dict(spec), generator=dict(spec))

    _rewrite(run_dir / "checkpoint.pt", lambda payload: evil(payload["config"]))
    record = json.loads((run_dir / "result.json").read_text())
    evil(record["config"])
    (run_dir / "result.json").write_text(json.dumps(record))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # consistent, so no other check stops it
    evil(config)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def forged(trained, tmp_path):
    run_dir, victim = tmp_path / "forged", tmp_path / "precious.txt"
    shutil.copytree(trained / "mlp", run_dir)
    victim.write_text("a user's file\n")
    _forge(run_dir, victim)
    return run_dir, victim


def _images(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=np.zeros((2, 8, 8), dtype=np.uint8))
    return str(path)


COMMANDS = {
    "evaluate": lambda run, tmp: ["evaluate", run, "--device", "cpu"],
    "predict": lambda run, tmp: ["predict", run, _images(tmp), "--device", "cpu"],
    "sample": lambda run, tmp: ["sample", run, "--device", "cpu", "--out", str(tmp / "grid.png")],
    "export": lambda run, tmp: ["export", run, "--format", "torchscript", "--out", str(tmp / "m.pt")],
    "ensemble": lambda run, tmp: ["ensemble", run, "--device", "cpu"],
    "table --from": lambda run, tmp: ["table", "--from", run, "--out-dir", str(tmp / "results")],
    "fit --resume": lambda run, tmp: ["fit", "--resume", run, "train.epochs=2"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_forged_checkpoint_runs_no_code_in_any_command(command, forged, tmp_path, capsys):
    run_dir, victim = forged
    assert main(COMMANDS[command](str(run_dir), tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "networks of its own" in err and "--discriminator" in err, err
    assert victim.read_text() == "a user's file\n"


def test_ssgan_load_of_a_forged_checkpoint_runs_no_code(forged):
    run_dir, victim = forged
    with pytest.raises(ConfigError, match="networks of its own.*networks="):
        ssgan.load(run_dir)
    assert victim.read_text() == "a user's file\n"


def test_builders_named_for_a_forged_run_never_pass_its_arguments_on(forged, capsys):
    """The person names the builders; the stored spec's own keywords (_args_ here) are data that must not
    reach Hydra's instantiate, which would read _args_, _target_ inside them, _partial_ ..."""
    run_dir, victim = forged
    assert main(["evaluate", str(run_dir), "--device", "cpu", "--discriminator", "tests.custom_nets:SmallCNN",
                 "--generator", "tests.custom_nets:SmallGenerator"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "_args_" in err, err
    assert victim.read_text() == "a user's file\n"


def test_a_stored_interpolation_is_refused_not_resolved(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "mlp", run_dir)
    _rewrite(run_dir / "checkpoint.pt", lambda p: p["config"]["dataset"].update(path="${oc.env:HOME}"))
    with pytest.raises(ConfigError, match="interpolation"):
        ssgan.load(run_dir)


def test_a_stored_config_never_downloads(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "mlp", run_dir)
    _rewrite(run_dir / "checkpoint.pt", lambda p: p["config"]["dataset"].update(download=True, root="/elsewhere"))
    assert ssgan.load(run_dir).config_.dataset.download is False


def test_a_run_of_ones_own_networks_loads_only_when_they_are_named(trained, capsys):
    run_dir = str(trained / "custom")
    assert main(["evaluate", run_dir, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tests.custom_nets.SmallCNN" in err, err
    assert "--discriminator MODULE:BUILDER --generator MODULE:BUILDER" in err, err
    named = ["--discriminator", "tests.custom_nets:SmallCNN", "--generator", "tests.custom_nets:SmallGenerator"]
    assert main(["evaluate", run_dir, "--device", "cpu", *named]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test error:")
    assert main(["evaluate", str(trained / "mlp"), "--device", "cpu", *named]) == 2
    assert "was not made with networks of its own" in capsys.readouterr().err

    from tests.custom_nets import SmallCNN, SmallGenerator
    trust.forget_given()  # (named above, the specs stay given in this process)
    with pytest.raises(ConfigError, match="networks of its own"):
        ssgan.load(run_dir)
    by_name = ssgan.load(run_dir, networks=("tests.custom_nets:SmallCNN", "tests.custom_nets:SmallGenerator"))
    by_class = ssgan.load(run_dir, networks=(SmallCNN, SmallGenerator))
    by_module = ssgan.load(run_dir, networks=(SmallCNN((1, 8, 8), 10, width=8), SmallGenerator((1, 8, 8), 100)))
    x = np.random.RandomState(0).randint(0, 17, (3, 64))
    for loaded in (by_class, by_module):
        np.testing.assert_allclose(loaded.predict_proba(x), by_name.predict_proba(x), atol=1e-6)


def test_a_run_of_ones_own_networks_resumes_when_they_are_named(trained, tmp_path, capsys):
    run_dir = tmp_path / "custom"
    shutil.copytree(trained / "custom", run_dir)
    assert main(["fit", "--resume", str(run_dir), "train.epochs=2"]) == 2
    assert "--discriminator MODULE:BUILDER" in capsys.readouterr().err
    assert main(["fit", "--resume", str(run_dir), "train.epochs=2", "--discriminator",
                 "tests.custom_nets:SmallCNN", "--generator", "tests.custom_nets:SmallGenerator"]) == 0


def test_a_saved_estimator_of_ones_own_networks_loads_only_when_they_are_named(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    estimator = ssgan.SSGANClassifier(recipe="digits", epochs=1, iters_per_epoch=2, image_shape=(1, 8, 8),
                                      device="cpu", discriminator="tests.custom_nets.SmallCNN",
                                      generator="tests.custom_nets.SmallGenerator")
    estimator.fit(x[:300], np.where(np.arange(300) < 100, y[:300], -1)).save(tmp_path / "e.pt")
    trust.forget_given()
    with pytest.raises(ConfigError, match="networks of its own"):
        ssgan.SSGANClassifier.load(tmp_path / "e.pt")
    loaded = ssgan.SSGANClassifier.load(tmp_path / "e.pt", networks=("tests.custom_nets.SmallCNN",
                                                                     "tests.custom_nets.SmallGenerator"))
    np.testing.assert_allclose(loaded.predict_proba(x[:4]), estimator.predict_proba(x[:4]), atol=1e-6)


def test_a_density_model_file_is_read_weights_only(tmp_path):
    from ssgan.density import load_density

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "density.pt"
    torch.save({"hparams": Payload()}, path)
    with pytest.raises(ConfigError, match="holds more than weights"):
        load_density(path)


@pytest.mark.parametrize("override", [
    "+model.discriminator._target_=builtins.open",  # a Hydra key: the spec would be composed, hence given
    "model.discriminator={_target_:builtins.open,_args_:[VICTIM,w]}",  # the same as a dict value
    "dataset=../../../../../../../../tmp/evil",  # a config file outside ssgan's configs (group traversal)
    "+recipe@_global_=digits",  # a package of its own
    "hydra.searchpath=[file:///tmp]",  # Hydra's own config: a search path for the file's group options
    "train.lr=${oc.env:HOME}",  # an interpolation
])
def test_a_saved_estimators_stored_overrides_are_refused_when_they_name_code(override, tmp_path):
    """A saved estimator's parameters come back with it, ``overrides`` among them, and a refit (``fit``, or
    sklearn's ``clone`` then ``fit``) composes them as if the person had typed them: specs composed so are
    given and Hydra instantiates them. So the stored ones are data: checked on loading, refused if they name
    code, a config file, Hydra's own settings or an interpolation."""
    from sklearn.base import clone
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    y = np.where(np.arange(300) < 100, y[:300], -1)
    estimator = ssgan.SSGANClassifier(recipe="digits", epochs=1, iters_per_epoch=2, image_shape=(1, 8, 8),
                                      device="cpu", overrides=("train.lr=0.001",))
    estimator.fit(x[:300], y).save(tmp_path / "e.pt")
    assert ssgan.SSGANClassifier.load(tmp_path / "e.pt").overrides == ("train.lr=0.001",)  # plain ones load
    victim = tmp_path / "precious.txt"
    victim.write_text("a user's file\n")
    payload = torch.load(tmp_path / "e.pt", weights_only=True)
    payload["params"]["overrides"] = ["model=custom", override.replace("VICTIM", str(victim)),
                                      "model.generator._target_=builtins.open"]
    torch.save(payload, tmp_path / "forged.pt")
    trust.forget_given()
    with pytest.raises(ConfigError, match="stored override"):  # on loading, before any refit
        ssgan.SSGANClassifier.load(tmp_path / "forged.pt")
    payload["params"]["overrides"] = [override]  # each alone
    torch.save(payload, tmp_path / "forged.pt")
    with pytest.raises(ConfigError, match="stored override"):
        clone(ssgan.SSGANClassifier.load(tmp_path / "forged.pt")).fit(x[:300], y)
    assert victim.read_text() == "a user's file\n"


DEEP_JSON = "[" * 100_000 + "]" * 100_000
# YAML's aliases: 12 levels of 10 references each stand for 10**12 values in a few hundred bytes.
ALIAS_BOMB = "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 13))


@pytest.mark.parametrize("name, content, command", [
    ("result.json", DEEP_JSON, "ensemble"),
    ("result.json", DEEP_JSON, "table --from"),
    ("metrics.jsonl", DEEP_JSON, "fit --resume"),
    ("config.yaml", DEEP_JSON, "fit --resume"),
    ("seeds.json", DEEP_JSON, "fit --resume"),
    ("config.yaml", None, "fit --resume"),  # ALIAS_BOMB under a config key
])
def test_a_record_nested_without_bound_is_one_line(name, content, command, trained, tmp_path, capsys):
    """A run directory's JSON and YAML files are parsed by recursive readers (RecursionError) and YAML's
    aliases share nodes (an exponential walk): one line and exit 2, promptly, never a traceback or a hang."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "mlp", run_dir)
    if content is None:
        config = (run_dir / name).read_text()
        content = ALIAS_BOMB + config.replace("dataset:\n", "dataset:\n  bomb: *a12\n", 1)
    elif name == "metrics.jsonl":  # (a malformed last line is one cut by a kill: dropped, its epoch redone)
        content += "\n" + (run_dir / name).read_text()
    (run_dir / name).write_text(content)
    assert main(COMMANDS[command](str(run_dir), tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err, err


def test_a_calibration_record_nested_without_bound_is_one_line(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "mlp", run_dir)
    (run_dir / "calibration.json").write_text("[" * 2000 + "]" * 2000)  # within its 4096 bytes
    with pytest.raises(RunDirError, match="calibration.json: not a calibration record"):
        ssgan.load(run_dir)


@pytest.mark.parametrize("change", [
    lambda p: p["hparams"].update(stages=10**9),  # 10**9 blocks built before any weight is compared
    lambda p: p["hparams"].update(nr_resnet=10**9),
    lambda p: p["hparams"].update(nr_filters=10**7),
    lambda p: p["hparams"].update(bogus=1),  # TypeError from the constructor
    lambda p: p.update(hparams=[1, 2]),
    lambda p: p.update(threshold="high"),
    lambda p: p.update(state_dict=None),
], ids=["stages", "nr_resnet", "nr_filters", "unknown", "hparams", "threshold", "state_dict"])
def test_a_density_model_files_sizes_and_fields_are_checked_before_building(change, tmp_path):
    from ssgan.density import PixelCNNpp, load_density, save_density

    path = tmp_path / "density.pt"
    save_density(path, PixelCNNpp(nr_filters=4, nr_resnet=1, nr_mix=2), 1.5, "unit", [1, 8, 8])
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    with pytest.raises(ConfigError, match="density_model"):
        load_density(path)


@pytest.mark.parametrize("command", ["evaluate", "predict", "sample", "export", "fit --resume"])
def test_a_checkpoint_declaring_networks_of_another_size_is_refused_before_building(command, trained, tmp_path,
                                                                                     capsys):
    """A config naming widths of 10**6 (4 TB of weights for a 1 KB file) is compared with the stored weights'
    shapes on the meta device, before anything is allocated (it was a traceback here, and a size that fits in
    memory was allocated and initialised before the weights were found not to fit)."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "mlp", run_dir)
    _rewrite(run_dir / "checkpoint.pt", lambda p: p["config"]["model"].update(d_widths=[10**6, 10**6]))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # consistent, so no other check stops it
    config["model"]["d_widths"] = [10**6, 10**6]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(COMMANDS[command](str(run_dir), tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit the architecture" in err, err


@pytest.mark.parametrize("command", ["table --from", "ensemble"])
def test_a_result_records_interpolation_is_never_resolved(command, trained, tmp_path, capsys):
    """result.json's config is keyed (seeds.config_key) by reading it against the schema: an interpolation in
    it (a resolver of the person's process, here a spy) must not be resolved there either."""
    from omegaconf import OmegaConf

    calls = []
    OmegaConf.register_new_resolver("spy", lambda *a: calls.append(a) or "digits", replace=True)
    try:
        run_dir = tmp_path / "run"
        shutil.copytree(trained / "mlp", run_dir)
        record = json.loads((run_dir / "result.json").read_text())
        record["config"]["dataset"]["name"] = "${spy:}"
        (run_dir / "result.json").write_text(json.dumps(record))
        main(COMMANDS[command](str(run_dir), tmp_path))
    finally:
        OmegaConf.clear_resolver("spy")
    assert calls == []


@pytest.mark.parametrize("dtype", ["foo", "V1000000000000", "U1000000000", "M8[s]"])
def test_a_saved_estimators_classes_dtype_is_checked(dtype, tmp_path):
    """The dtype string the classes are rebuilt with is data: one line for anything but booleans, numbers and
    short strings (numpy raised TypeError for a name it does not know)."""
    from ssgan.rundir import RunDirError

    estimator = ssgan.SSGANClassifier(recipe="tabular", epochs=1, iters_per_epoch=1, device="cpu")
    x = np.random.RandomState(0).rand(40, 3)
    estimator.fit(x, np.where(np.arange(40) < 10, np.arange(40) % 2, -1)).save(tmp_path / "e.pt")
    payload = torch.load(tmp_path / "e.pt", weights_only=True)
    payload["classes_dtype"] = dtype
    torch.save(payload, tmp_path / "e.pt")
    with pytest.raises(RunDirError, match="classes_dtype"):
        ssgan.SSGANClassifier.load(tmp_path / "e.pt")
