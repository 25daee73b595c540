"""`pull --format ckpt|npz`: only the chosen files of a published checkpoint, each verified
against the checkpoint's manifest (on file://, the same protocol as on S3/OBS)."""

from __future__ import annotations

import json
import os

import pytest

from launcher.cli import main as cli
from launcher.errors import UsageError
from launcher.outputs.checkpoints import MANIFEST, pull, verify_checkpoint
from launcher.outputs.publish import Publisher
from launcher.storage import IntegrityError
from leo_core.ckpt_format import CKPT_NAME
from tests.launcher.outputs.test_checkpoints import write_checkpoint


@pytest.fixture
def published(tmp_path):
    """A published checkpoint as leo_core.train writes it now: .npz files and leo.ckpt."""
    out, remote = tmp_path / "out", tmp_path / "remote" / "job-1"
    step = write_checkpoint(out, 10, accuracy=0.3)
    (step / CKPT_NAME).write_bytes(os.urandom(5000))
    with Publisher(out, str(remote)) as publisher:
        publisher.final()
    return remote


@pytest.mark.parametrize("fmt, files", [
    ("ckpt", ["leo.ckpt", "state.json"]),
    ("npz", ["optimizer.npz", "state.json", "weights.npz"]),
    (None, ["leo.ckpt", "optimizer.npz", "state.json", "weights.npz"]),
])
def test_pull_brings_the_chosen_files_verified(published, tmp_path, fmt, files):
    pulled = pull(str(published), "best", tmp_path / "c", fmt=fmt)
    assert sorted(p.name for p in pulled.path.iterdir()) == sorted([*files, MANIFEST])
    assert pulled.files == len(files) and verify_checkpoint(pulled.path)
    manifest = json.loads((pulled.path / MANIFEST).read_text())
    assert sorted(f["name"] for f in manifest["files"]) == files and manifest.get("subset") == fmt
    remote = published / "checkpoints" / "step-10"
    assert all((pulled.path / name).read_bytes() == (remote / name).read_bytes() for name in files)


def test_a_tampered_ckpt_fails_its_pull_but_not_the_npz_one(published, tmp_path):
    target = published / "checkpoints" / "step-10" / CKPT_NAME
    target.write_bytes(os.urandom(target.stat().st_size))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        pull(str(published), "best", tmp_path / "c", fmt="ckpt")
    assert list((tmp_path / "c").iterdir()) == []
    assert pull(str(published), "best", tmp_path / "c", fmt="npz").files == 3


def test_a_checkpoint_without_a_ckpt_is_a_clear_error_and_nothing_is_written(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "remote" / "old"
    write_checkpoint(out, 5, accuracy=0.2)  # published before leo.ckpt existed
    with Publisher(out, str(remote)) as publisher:
        publisher.final()
    with pytest.raises(UsageError, match="has no leo.ckpt .*pull it without --format"):
        pull(str(remote), "best", tmp_path / "c", fmt="ckpt")
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


def test_the_cli(published, tmp_path, capsys):
    code = cli.main(["pull", str(published), "--format", "ckpt", "--to", str(tmp_path / "c")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "pulled best checkpoint step 10 (ckpt files), accuracy 30.00%: 2 file(s)" in captured.out
    assert (tmp_path / "c" / "step-10" / CKPT_NAME).is_file() and (tmp_path / "c" / "best.json").is_file()
    code = cli.main(["pull", str(published), "--tree", "--format", "npz", "--to", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "--format selects a checkpoint's files" in err and not (tmp_path / "t").exists()
    with pytest.raises(SystemExit):
        cli.main(["pull", str(published), "--format", "safetensors"])
