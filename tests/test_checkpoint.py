"""The checkpoint (ssgan/checkpoint.py): weights-only reading that refuses pickled code, the checksum, and the
temporary files a killed writer leaves. Resuming from checkpoints end to end is in test_rundir.py."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from ssgan.checkpoint import content_digest, load_checkpoint, remove_stale_temporaries
from ssgan.rundir import CHECKPOINT_FORMAT, RunDirError


class _Payload:
    """Unpickling this would run code (os.system) if the loader allowed arbitrary objects."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the plain pickle file, read by torch.load
def test_a_checkpoint_carrying_a_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _Payload()}, path)
    with pytest.raises(RunDirError, match="refused"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "payload": _Payload()}))
    with pytest.raises(RunDirError):
        load_checkpoint(plain)


def test_the_checksum_covers_strided_one_element_tensors():
    column = torch.zeros(1, 7)[:, 3]  # (1,) with stride 7: "contiguous", yet not viewable as bytes
    assert content_digest({"x": column}) == content_digest({"x": torch.zeros(1)})
    assert content_digest({"x": torch.arange(12.0).view(3, 4)[:, 1]}) == content_digest({"x": torch.tensor([1.0, 5.0, 9.0])})
    assert content_digest({"x": torch.zeros(2)}) != content_digest({"x": torch.ones(2)})


def test_only_a_checkpoint_writer_s_temporaries_are_stale(tmp_path):
    stale = [tmp_path / ".checkpoint.pt.k1ll3d.tmp", tmp_path / "..checkpoint.pt.staged.k1ll3d.tmp"]
    kept = [tmp_path / ".result.json.k1ll3d.tmp", tmp_path / "checkpoint.pt", tmp_path / "notes.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)


def test_a_cut_group_commit_never_switches_a_finished_member_back(tmp_path):
    """A member that finished one seed at a time after its group's commit was cut keeps its own, newer
    checkpoint: its stale staged file goes; the unfinished members are switched as the record says."""
    import json

    from ssgan.checkpoint import recover_group_checkpoints

    first, finished = tmp_path / "seed0", tmp_path / "seed1"
    for folder in (first, finished):
        folder.mkdir()
        (folder / ".checkpoint.pt.staged").write_text("staged")
    (finished / "checkpoint.pt").write_text("newer")
    (finished / "result.json").write_text("{}")
    (first / ".group-commit.json").write_text(json.dumps({"members": [str(first), str(finished)]}))
    recover_group_checkpoints([first, finished])
    assert (first / "checkpoint.pt").read_text() == "staged" and (finished / "checkpoint.pt").read_text() == "newer"
    assert not [p for f in (first, finished) for p in f.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------- a resume takes the run's config, not another's

def _tiny_run(path, *extra):
    from ssgan.cli import main
    from tests.conftest import TINY_OVERRIDES

    assert main(["fit", "--run-dir", str(path), *TINY_OVERRIDES, "train.epochs=2", *extra]) == 0


def test_a_resume_refuses_a_checkpoint_of_another_config(tmp_path, capsys):
    """A ct_gan checkpoint put into an improved_gan run: refused with one line naming the fields, and the
    run's config.yaml and metrics.jsonl are left as they were."""
    import shutil

    from ssgan.cli import main

    _tiny_run(tmp_path / "improved")
    _tiny_run(tmp_path / "ct", "method=ct_gan")
    run = tmp_path / "improved"
    shutil.copy(tmp_path / "ct" / "checkpoint.pt", run / "checkpoint.pt")
    (run / "result.json").unlink()
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    capsys.readouterr()
    assert main(["fit", "--resume", str(run), "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method.name" in err and "config.yaml" in err, err
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_resume_refuses_edits_to_config_yaml_and_says_how_to_change_a_field(tmp_path, capsys):
    from ssgan.cli import main

    run = tmp_path / "run"
    _tiny_run(run)
    (run / "result.json").unlink()
    text = (run / "config.yaml").read_text()
    assert "  lr: 0.003\n" in text
    (run / "config.yaml").write_text(text.replace("  lr: 0.003\n", "  lr: 0.001\n"))
    capsys.readouterr()
    assert main(["fit", "--resume", str(run), "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lr" in err and "train.lr=0.001" in err, err
    assert main(["fit", "--resume", str(run), "train.epochs=3", "train.lr=0.001"]) == 0


def test_a_nan_optimizer_state_is_refused_and_never_called_good(tmp_path, capsys):
    """A NaN in Adam's state passed the checks: the resume diverged and the message called that very file "the
    last good checkpoint". Now the file is refused with one line, and a kept file is called good only if it is."""
    import io

    from ssgan.cli import main
    from ssgan.train import kept_checkpoint

    run = tmp_path / "run"
    _tiny_run(run)
    (run / "result.json").unlink()
    path = run / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["opt_d"]["state"][0]["exp_avg_sq"][0, 0] = float("nan")
    payload["sha256"] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(RunDirError, match="opt_d.*not finite"):
        load_checkpoint(path)
    capsys.readouterr()
    assert main(["fit", "--resume", str(run), "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "opt_d" in err, err
    assert "last good checkpoint" not in kept_checkpoint(run) and "refused" in kept_checkpoint(run)
