"""A manifest that lies about a file's size (issue 12, case 8): `pull` refuses it, as
`verify_checkpoint` would afterwards, and leaves nothing that looks complete."""

from __future__ import annotations

import json

import pytest

from launcher.outputs.checkpoints import MANIFEST, pull, verify_checkpoint
from launcher.outputs.publish import Publisher
from launcher.storage import IntegrityError
from tests.launcher.outputs.test_checkpoints import job, write_checkpoint  # noqa: F401 - fixture


@pytest.mark.integration
def test_pull_refuses_a_manifest_with_a_wrong_size(job, tmp_path):  # noqa: F811
    write_checkpoint(job["out"], 400, accuracy=0.6)
    with Publisher(job["out"], job["url"], options=job["options"]) as publisher:
        publisher.final()
    key = "train/job-1/checkpoints/step-400/" + MANIFEST
    client = job["server"].client()
    manifest = json.loads(client.get_object(Bucket=job["bucket"], Key=key)["Body"].read())
    manifest["files"][0]["size"] += 1  # sha256 still right: only the size lies
    client.put_object(Bucket=job["bucket"], Key=key, Body=json.dumps(manifest).encode())
    dest = tmp_path / "ckpt"
    with pytest.raises(IntegrityError, match="size mismatch"):
        pull(job["url"], "best", dest, options=job["options"])
    assert not (dest / "step-400").exists() and not (dest / "best.json").exists()
    # what a pull that accepted it would have left fails the project's own check
    assert not verify_checkpoint(job["out"] / "checkpoints" / "step-400", manifest)
