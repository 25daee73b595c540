"""Property-based tests (Hypothesis) of what is read back from storage (issue 12):
checkpoint pointers and manifests, and a whole pull from a store holding arbitrary ones.
Properties: a StorageError (exit code 1) with one line, never another exception; nothing
is written outside the destination; a pull that succeeds verified every file."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from launcher.outputs.checkpoints import (
    MANIFEST,
    _manifest_files,
    _parse_pointer,
    pull,
    verify_checkpoint,
)
from launcher.storage import StorageError
from tests.launcher.properties import SETTINGS, hostile_text, one_line

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | hostile_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3),
    max_leaves=10)
names = st.sampled_from(["w.npz", "a/b.npz", "../x", "/abs", "", ".", "a//b", MANIFEST]) | hostile_text
sizes = st.sampled_from([0, 1, 5, -1, "5", 10**30, None, 1.5])
shas = st.sampled_from(["0" * 64, "A" * 64, "x", "", None]) | hostile_text
entries = st.fixed_dictionaries({"name": names, "size": sizes, "sha256": shas}) | json_values
manifests = st.fixed_dictionaries({"format": st.just(1), "files": st.lists(entries, max_size=3)}) | json_values
pointers = (st.builds(lambda step, path: json.dumps({"step": step, "path": path}).encode(),
                      st.integers() | hostile_text | st.none(),
                      st.sampled_from(["step-5", "step-x", "../step-1", "step-5/..", ""]) | hostile_text)
            | st.binary(max_size=60))


@SETTINGS
@given(pointers)
def test_pointers(data):
    try:
        pointer = _parse_pointer(data, "best.json")
    except StorageError as err:
        one_line(err)
        return
    assert isinstance(pointer["step"], int) and pointer["path"].startswith("step-")


@SETTINGS
@given(manifests)
def test_manifests(manifest):
    try:
        files = _manifest_files(manifest, "MANIFEST.json")
    except StorageError as err:
        one_line(err)
        return
    for entry in files:
        assert ".." not in entry["name"].split("/") and not entry["name"].startswith("/")
        assert entry["size"] >= 0 and len(entry["sha256"]) == 64


@SETTINGS
@given(pointers, manifests, st.binary(max_size=20))
def test_pull_from_a_store_holding_arbitrary_pointers_and_manifests(
        tmp_path_factory, pointer, manifest, content):
    root = tmp_path_factory.mktemp("prop")
    job = root / "store" / "job"
    step = job / "checkpoints" / "step-5"
    step.mkdir(parents=True)
    (job / "checkpoints" / "best.json").write_bytes(pointer)
    (step / MANIFEST).write_text(json.dumps(manifest))
    (step / "w.npz").write_bytes(content)
    dest = root / "dest"
    try:
        pulled = pull(str(job), "best", dest)
    except StorageError as err:
        one_line(err)
    else:
        assert verify_checkpoint(pulled.path)
    outside = {p.relative_to(root).parts[0] for p in root.rglob("*")}
    assert outside <= {"store", "dest"}  # nothing written elsewhere
