"""leo_core.glyphs: the offline glyph benchmark (characters, splits by script, pickles)."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

pytest.importorskip("torch")

from leo_core import glyphs  # noqa: E402
from leo_core.data import EMBEDDING_DIM, SPLITS, EpisodeSampler, load_split, make_rng  # noqa: E402

KEY = re.compile(r"^(\d+)-(u[0-9A-F]{5})-(u[0-9A-F]{5})_(\d{8})\.png$")


def test_full_benchmark_has_disjoint_scripts_and_enough_classes():
    classes = glyphs.choose_classes(0)
    scripts = {split: {script for _, script, _ in classes[split]} for split in SPLITS}
    assert not (scripts["train"] & scripts["test"]) and not (scripts["train"] & scripts["val"])
    assert not (scripts["val"] & scripts["test"])
    codes = {split: {code for code, _, _ in classes[split]} for split in SPLITS}
    assert not (codes["train"] & codes["test"])
    assert len(classes["train"]) >= 400 and len(classes["val"]) >= 100 and len(classes["test"]) >= 300
    assert scripts["test"] == {"georgian", "armenian", "hebrew", "lisu", "lao"}
    assert all(len(faces) >= glyphs.MIN_FONTS for split in SPLITS for _, _, faces in classes[split])
    assert glyphs.choose_classes(0) == classes  # seeded


def test_augmented_images_differ_and_stay_in_range():
    import torch

    classes = glyphs.choose_classes(0)["test"][:3]
    bases, owners = glyphs.render_bases(classes)
    assert bases.shape[1:] == (glyphs.CANVAS, glyphs.CANVAS) and 0 <= bases.min() and bases.max() <= 1
    index = np.array([owners[0][0]] * 4)
    images = glyphs.augment(torch.from_numpy(bases), index, np.random.default_rng(0))
    assert tuple(images.shape) == (4, 1, glyphs.SIZE, glyphs.SIZE)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert float((images[0] - images[1]).abs().mean()) > 0.01  # random, not copies
    again = glyphs.augment(torch.from_numpy(bases), index, np.random.default_rng(0))
    assert torch.equal(images, again)


def test_small_build_writes_original_format_pickles(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(glyphs, "SCRIPTS", {
        "train": {"latin": (("LATIN",), 12), "cyrillic": (("CYRILLIC",), 8)},
        "val": {"greek": (("GREEK",), 6)},
        "test": {"georgian": (("GEORGIAN",), 4), "armenian": (("ARMENIAN",), 4)},
    })
    root = glyphs.build(tmp_path, seed=1, images_per_class=8, epochs=1, images_per_epoch=256,
                        batch_size=64)
    assert root == tmp_path / "glyphs"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [line[:5] for line in lines] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[4/5]", "[5/5]"]
    summary = json.loads((root / "build.json").read_text())
    assert summary["splits"]["test"]["scripts"] == {"georgian": 4, "armenian": 4}
    for split, classes in zip(SPLITS, (20, 6, 8), strict=True):
        with open(root / "center" / f"{split}_embeddings.pkl", "rb") as handle:
            data = pickle.load(handle, encoding="latin1")
        assert set(data) == {"keys", "embeddings", "labels"}
        assert data["embeddings"].dtype == np.float32
        assert data["embeddings"].shape == (classes * 8, EMBEDDING_DIM)
        assert data["embeddings"].min() >= 0  # post-ReLU features, as WRN's
        for row, key in enumerate(data["keys"]):
            match = KEY.match(str(key))
            assert match and int(match[1]) == row and match[2] == match[3]
        loaded = load_split(tmp_path, "glyphs", "center", split)
        assert loaded.num_classes == classes
        batch = EpisodeSampler(loaded, 5, 1, 7, make_rng(0)).sample(2)
        assert batch.val_x.shape == (2, 5, 7, EMBEDDING_DIM)
