"""leo_core.data: loading the embedding pickles, episode sampling, data errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from leo_core.config import load_experiment
from leo_core.data import (
    EMBEDDING_DIM,
    DataError,
    EpisodeBatch,
    EpisodeSampler,
    Split,
    embeddings_path,
    l2_normalize,
    load_split,
    make_rng,
    nearest_class_mean_accuracy,
    sampler_for,
)
from leo_core.synthetic import write_dataset

MINI = "miniImageNet"
IMAGES = 20


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic miniImageNet (6 / 5 / 5 classes x 20 images), both crops."""
    out = tmp_path_factory.mktemp("data")
    write_dataset(
        out,
        MINI,
        scale=0.1,
        images_per_class=IMAGES,
        seed=7,
        crops=("center", "multiview"),
        quiet=True,
    )
    return out


@pytest.fixture(scope="module")
def train(root: Path) -> Split:
    return load_split(root, MINI, "center", "train")


def raw(root: Path, split: str, crop: str = "center") -> dict:
    with open(embeddings_path(root, MINI, crop, split), "rb") as f:
        return pickle.load(f, encoding="latin1")


def write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def keys_for(classes: list[str], per_class: int) -> list[str]:
    return [
        f"{i}-{c}-{c}_{j:08d}.JPEG"
        for i, (c, j) in enumerate((c, j) for c in classes for j in range(per_class))
    ]


def normalized(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt(np.maximum((x * x).sum(-1, keepdims=True), 1e-12))


# --- paths and loading ----------------------------------------------------------------------


def test_embeddings_path_layout(tmp_path: Path) -> None:
    assert embeddings_path(tmp_path, "tieredImageNet", "center", "val") == (
        tmp_path / "tieredImageNet" / "center" / "val_embeddings.pkl"
    )
    for bad in (
        ("imagenet", "center", "train"),
        (MINI, "crop", "train"),
        (MINI, "center", "valid"),
    ):
        with pytest.raises(DataError, match="unknown"):
            embeddings_path(tmp_path, *bad)


def test_load_center_str_keys_groups_sorted_classes_and_normalises(
    root: Path, train: Split
) -> None:
    data = raw(root, "train")
    assert data["keys"].dtype.kind == "U"  # str keys, as the original center data
    keys = [str(k) for k in data["keys"]]
    classes = sorted({k.split("-")[1] for k in keys})
    assert train.name == "train"
    assert train.class_names == tuple(classes)
    assert train.num_classes == 6 and train.num_images == 6 * IMAGES
    assert str(embeddings_path(root, MINI, "center", "train")) in train.source
    for name, emb in zip(train.class_names, train.embeddings, strict=True):
        rows = [i for i, k in enumerate(keys) if k.split("-")[1] == name]
        assert emb.dtype == np.float32 and emb.shape == (len(rows), EMBEDDING_DIM)
        np.testing.assert_allclose(emb, normalized(data["embeddings"][rows]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_load_multiview_bytes_keys(root: Path, train: Split) -> None:
    data = raw(root, "train", "multiview")
    assert data["keys"].dtype.kind == "S"  # bytes keys, as the original multiview data
    split = load_split(root, MINI, "multiview", "train")
    assert split.class_names == train.class_names
    assert [len(e) for e in split.embeddings] == [len(e) for e in train.embeddings]
    np.testing.assert_allclose(
        np.linalg.norm(np.concatenate(split.embeddings), axis=1), 1.0, rtol=1e-5
    )
    assert not np.allclose(split.embeddings[0], train.embeddings[0])  # a different crop


@pytest.mark.parametrize("as_bytes", [False, True])
def test_load_list_keys_in_any_row_order(tmp_path: Path, as_bytes: bool) -> None:
    rng = np.random.default_rng(0)
    classes = ["n00000003", "n00000001", "n00000002"]
    keys = keys_for(classes, 4)
    emb = rng.random((len(keys), EMBEDDING_DIM)).astype(np.float64)  # any float dtype is accepted
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    emb = emb[order]
    stored = [k.encode() for k in keys] if as_bytes else keys
    write(
        embeddings_path(tmp_path, MINI, "center", "test"),
        {"keys": stored, "embeddings": emb, "labels": np.zeros(12)},
    )
    split = load_split(tmp_path, MINI, "center", "test")
    assert split.class_names == ("n00000001", "n00000002", "n00000003")
    for name, got in zip(split.class_names, split.embeddings, strict=True):
        rows = [i for i, k in enumerate(keys) if k.split("-")[1] == name]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, normalized(emb[rows]), rtol=1e-5)


def test_train_on_val_appends_val_to_train_only(root: Path, train: Split) -> None:
    val = load_split(root, MINI, "center", "val")
    both = load_split(root, MINI, "center", "train", train_on_val=True)
    assert both.class_names == tuple(sorted(train.class_names + val.class_names))
    assert both.num_images == train.num_images + val.num_images
    by_name = dict(zip(both.class_names, both.embeddings, strict=True))
    np.testing.assert_array_equal(by_name[val.class_names[0]], val.embeddings[0])
    np.testing.assert_array_equal(by_name[train.class_names[-1]], train.embeddings[-1])
    assert "val_embeddings.pkl" in both.source
    # Validation and test splits ignore the flag.
    assert load_split(root, MINI, "center", "val", train_on_val=True).class_names == val.class_names
    test = load_split(root, MINI, "center", "test", train_on_val=True)
    assert test.num_images == load_split(root, MINI, "center", "test").num_images


def test_l2_normalize_uses_tensorflow_epsilon() -> None:
    x = np.array([[3.0, 4.0] + [0.0] * 638, [0.0] * 640, [1e-8] + [0.0] * 639], dtype=np.float32)
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0, :2], [0.6, 0.8], rtol=1e-6)
    assert not y[1].any()  # zero stays zero (no division by zero)
    np.testing.assert_allclose(y[2, 0], 1e-8 / 1e-6, rtol=1e-5)  # sqrt(max(1e-16, 1e-12))


# --- sampler --------------------------------------------------------------------------------


def class_of_rows(split: Split) -> dict[bytes, int]:
    return {row.tobytes(): c for c, emb in enumerate(split.embeddings) for row in emb}


def test_sampler_shapes_labels_and_no_replacement(train: Split) -> None:
    n, k, q, b = 5, 3, 10, 40
    batch = EpisodeSampler(train, n, k, q, make_rng(0)).sample(b)
    assert isinstance(batch, EpisodeBatch) and batch.num_tasks == b
    assert batch.tr_x.shape == (b, n, k, EMBEDDING_DIM) and batch.tr_x.dtype == np.float32
    assert batch.val_x.shape == (b, n, q, EMBEDDING_DIM) and batch.val_x.dtype == np.float32
    assert batch.tr_y.shape == (b, n, k) and batch.tr_y.dtype == np.int32
    assert batch.val_y.shape == (b, n, q) and batch.val_y.dtype == np.int32
    assert (batch.tr_y == np.arange(n)[None, :, None]).all()
    assert (batch.val_y == np.arange(n)[None, :, None]).all()
    for x in (batch.tr_x, batch.val_x):
        np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-5)

    lookup = class_of_rows(train)
    seen_orders = set()
    for task in range(b):
        order = []
        for position in range(n):
            rows = np.concatenate([batch.tr_x[task, position], batch.val_x[task, position]])
            classes = {lookup[r.tobytes()] for r in rows}
            assert len(classes) == 1  # one class per label
            assert len(np.unique(rows, axis=0)) == k + q  # images drawn without replacement
            order.append(classes.pop())
        assert len(set(order)) == n  # classes drawn without replacement
        seen_orders.add(tuple(order))
    assert len(seen_orders) > b // 2  # the class order (and so the labels) is shuffled


def test_sampler_uses_every_class_in_every_position(train: Split) -> None:
    batch = EpisodeSampler(train, 5, 1, 1, make_rng(1)).sample(300)
    lookup = class_of_rows(train)
    for position in range(5):
        classes = {lookup[batch.tr_x[t, position, 0].tobytes()] for t in range(300)}
        assert classes == set(range(train.num_classes))


def test_same_seed_same_episodes_other_streams_differ(train: Split) -> None:
    def draw(seed: int, stream: int) -> EpisodeBatch:
        return EpisodeSampler(train, 5, 1, 15, make_rng(seed, stream)).sample(6)

    first, again = draw(3, 0), draw(3, 0)
    for field in ("tr_x", "tr_y", "val_x", "val_y"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.val_x, draw(3, 1).val_x)
    assert not np.array_equal(first.val_x, draw(4, 0).val_x)
    assert make_rng(3, 1).bit_generator.state != make_rng(3, 0).bit_generator.state


def test_rng_state_restores_the_episode_sequence(train: Split) -> None:
    sampler = EpisodeSampler(train, 5, 5, 15, make_rng(11))
    sampler.sample(4)
    state = sampler.rng.bit_generator.state
    expected = sampler.sample(4)
    resumed = EpisodeSampler(train, 5, 5, 15, make_rng(0))
    resumed.rng.bit_generator.state = state
    np.testing.assert_array_equal(resumed.sample(4).val_x, expected.val_x)


@pytest.mark.parametrize(
    "tasks", [slice(0, 3), slice(3, 6), slice(5, 8), slice(1, 8, 3), slice(None)]
)
def test_task_slice_equals_slicing_the_full_batch(train: Split, tasks: slice) -> None:
    full_sampler = EpisodeSampler(train, 5, 1, 15, make_rng(5, 2))
    part_sampler = EpisodeSampler(train, 5, 1, 15, make_rng(5, 2))
    full, part = full_sampler.sample(8), part_sampler.sample(8, tasks=tasks)
    for field in ("tr_x", "tr_y", "val_x", "val_y"):
        np.testing.assert_array_equal(getattr(part, field), getattr(full, field)[tasks])
    # Both rngs advanced identically: the next batches agree too.
    assert part_sampler.rng.bit_generator.state == full_sampler.rng.bit_generator.state
    np.testing.assert_array_equal(part_sampler.sample(8).val_x, full_sampler.sample(8).val_x)


def test_ranks_sampling_their_share_cover_the_global_batch(train: Split) -> None:
    full = EpisodeSampler(train, 5, 1, 15, make_rng(9)).sample(12)
    shares = [
        EpisodeSampler(train, 5, 1, 15, make_rng(9)).sample(12, tasks=slice(rank * 3, rank * 3 + 3))
        for rank in range(4)
    ]
    np.testing.assert_array_equal(np.concatenate([s.tr_x for s in shares]), full.tr_x)


def test_gather_materialises_drawn_indices_in_chunks(train: Split) -> None:
    full = EpisodeSampler(train, 5, 1, 15, make_rng(4)).sample(10)
    sampler = EpisodeSampler(train, 5, 1, 15, make_rng(4))
    rows = sampler.sample_indices(10)
    assert rows.shape == (10, 5, 16)
    chunks = [sampler.gather(rows[i : i + 4]) for i in range(0, 10, 4)]
    np.testing.assert_array_equal(np.concatenate([c.val_x for c in chunks]), full.val_x)
    np.testing.assert_array_equal(np.concatenate([c.tr_y for c in chunks]), full.tr_y)
    with pytest.raises(ValueError, match="rows must be"):
        sampler.gather(rows[:, :, :3])


def test_sampler_accepts_a_split_built_by_hand() -> None:
    rng = np.random.default_rng(0)
    arrays = tuple(l2_normalize(rng.random((n, EMBEDDING_DIM))) for n in (4, 6, 5))
    split = Split("test", ("a", "b", "c"), arrays)
    batch = EpisodeSampler(split, 3, 1, 3, make_rng(0)).sample(2)
    assert batch.val_x.shape == (2, 3, 3, EMBEDDING_DIM)


def test_sampler_argument_checks(train: Split) -> None:
    with pytest.raises(ValueError, match="num_tr"):
        EpisodeSampler(train, 5, 0, 15, make_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        EpisodeSampler(train, 5, 1, 15, np.random.RandomState(0))  # type: ignore[arg-type]
    sampler = EpisodeSampler(train, 5, 1, 15, make_rng(0))
    with pytest.raises(ValueError, match="batch_size"):
        sampler.sample(0)
    with pytest.raises(TypeError, match="slice"):
        sampler.sample(4, tasks=[0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        make_rng(-1)


def test_sampler_for_reads_the_experiment_config(root: Path) -> None:
    cfg = load_experiment("mini_5shot", ["total_examples_per_class=20"])
    train_sampler = sampler_for(cfg, root, "train", make_rng(0))
    assert (train_sampler.num_classes, train_sampler.num_tr, train_sampler.num_val) == (5, 5, 15)
    assert train_sampler.split.num_classes == 6
    val_sampler = sampler_for(cfg, root, "val", make_rng(0))
    assert val_sampler.num_val == 15  # total_examples_per_class - K
    assert sampler_for(cfg, root, "test", make_rng(0), num_val=4).num_val == 4
    on_val = sampler_for(cfg.with_overrides({"train_on_val": True}), root, "train", make_rng(0))
    assert on_val.split.num_classes == 6 + 5
    batch = val_sampler.sample(2)
    assert batch.tr_x.shape == (2, 5, 5, EMBEDDING_DIM) and batch.val_x.shape == (
        2,
        5,
        15,
        EMBEDDING_DIM,
    )


def test_nearest_class_mean_accuracy() -> None:
    eye = np.eye(EMBEDDING_DIM, dtype=np.float32)
    tr_x = np.stack([eye[[0, 1, 2]][:, None, :]] * 2)  # 2 tasks, 3 classes, 1 shot
    val_x = np.stack([eye[[0, 1, 2]][:, None, :].repeat(2, axis=1)] * 2)
    labels = np.arange(3, dtype=np.int32)
    batch = EpisodeBatch(
        tr_x=tr_x,
        tr_y=np.broadcast_to(labels[None, :, None], (2, 3, 1)),
        val_x=val_x,
        val_y=np.broadcast_to(labels[None, :, None], (2, 3, 2)),
    )
    np.testing.assert_array_equal(nearest_class_mean_accuracy(batch), [1.0, 1.0])
    batch.val_x = val_x[:, [1, 2, 0]]
    np.testing.assert_array_equal(nearest_class_mean_accuracy(batch), [0.0, 0.0])


# --- bad data -------------------------------------------------------------------------------


def good_dict(classes: tuple[str, ...] = ("n00000001", "n00000002"), per_class: int = 3) -> dict:
    keys = keys_for(list(classes), per_class)
    rng = np.random.default_rng(0)
    return {
        "keys": np.array(keys),
        "embeddings": rng.random((len(keys), EMBEDDING_DIM), dtype=np.float32),
        "labels": np.zeros(len(keys), dtype=np.int64),
    }


def expect_error(root: Path, pattern: str, split: str = "test", **kwargs: bool) -> DataError:
    with pytest.raises(DataError, match=pattern) as info:
        load_split(root, MINI, "center", split, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    err = expect_error(tmp_path, "no such file")
    assert str(embeddings_path(tmp_path, MINI, "center", "test")) in str(err)


def test_missing_val_file_with_train_on_val(tmp_path: Path) -> None:
    write(embeddings_path(tmp_path, MINI, "center", "train"), good_dict())
    err = expect_error(tmp_path, "no such file", split="train", train_on_val=True)
    assert "val_embeddings.pkl" in str(err)


@pytest.mark.parametrize(
    "content",
    [b"this is not a pickle", pickle.dumps(good_dict())[:100], b""],
    ids=["text", "truncated", "empty"],
)
def test_unreadable_pickle(tmp_path: Path, content: bytes) -> None:
    path = embeddings_path(tmp_path, MINI, "center", "test")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    err = expect_error(tmp_path, "not a readable pickle")
    assert str(path) in str(err)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    embeddings_path(tmp_path, MINI, "center", "test").mkdir(parents=True)
    expect_error(tmp_path, "directory")


def test_not_a_dict(tmp_path: Path) -> None:
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), [1, 2, 3])
    assert str(path) in str(expect_error(tmp_path, "expected a dict"))


@pytest.mark.parametrize("missing", ["keys", "embeddings"])
def test_missing_dict_key(tmp_path: Path, missing: str) -> None:
    data = good_dict()
    del data[missing]
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    err = expect_error(tmp_path, f"missing key '{missing}'")
    assert str(path) in str(err)


@pytest.mark.parametrize("shape", [(6, 512), (6,), (6, 640, 1)])
def test_wrong_embedding_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = good_dict()
    data["embeddings"] = np.zeros(shape, dtype=np.float32)
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    err = expect_error(tmp_path, r"expected \(n, 640\)")
    assert str(path) in str(err) and str(shape) in str(err)


def test_non_numeric_embeddings(tmp_path: Path) -> None:
    data = good_dict()
    data["embeddings"] = np.array([["x"] * EMBEDDING_DIM] * 6)
    write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    expect_error(tmp_path, "not a numeric array")


def test_keys_embeddings_length_mismatch(tmp_path: Path) -> None:
    data = good_dict()
    data["keys"] = data["keys"][:-1]
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    err = expect_error(tmp_path, "5 keys but 6 embeddings")
    assert str(path) in str(err)


def test_empty_split(tmp_path: Path) -> None:
    data = {
        "keys": np.array([], dtype="U1"),
        "embeddings": np.zeros((0, EMBEDDING_DIM), np.float32),
    }
    write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    expect_error(tmp_path, "no examples")


@pytest.mark.parametrize(
    "key",
    [
        "n00000001_00000001.JPEG",  # one field
        "a-n00000001",  # two fields
        "a-b-n00000001-n00000001_1.JPEG",  # four fields
        "a-n00000001-n00000002_1.JPEG",  # file of another class
        "a-n00000001-n00000001.JPEG",  # no '_' after the class
        "a--_1.JPEG",  # empty class
        b"a-n00000001-\xff\xfe_1",  # bytes that are not UTF-8
        42,  # not a string
    ],
)
def test_malformed_key(tmp_path: Path, key: object) -> None:
    data = good_dict()
    keys = list(data["keys"])
    keys[4] = key
    data["keys"] = keys
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    err = expect_error(tmp_path, "key 4")
    assert str(path) in str(err)


def test_duplicate_image(tmp_path: Path) -> None:
    data = good_dict()
    keys = [str(k) for k in data["keys"]]
    keys[1] = "other-" + keys[0].split("-", 1)[1]  # same image under another prefix
    data["keys"] = keys
    write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    expect_error(tmp_path, "duplicate image")


def test_non_finite_embedding(tmp_path: Path) -> None:
    data = good_dict()
    data["embeddings"][3, 7] = np.nan
    write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    expect_error(tmp_path, "row 3 holds NaN")


def test_tiered_has_no_multiview(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only for crop 'center'"):
        load_split(tmp_path, "tieredImageNet", "multiview", "train")


def test_fewer_classes_than_ways(tmp_path: Path) -> None:
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), good_dict(per_class=20))
    split = load_split(tmp_path, MINI, "center", "test")
    with pytest.raises(DataError, match="2 classes, fewer than the 5 an episode needs") as info:
        EpisodeSampler(split, 5, 1, 15, make_rng(0))
    assert str(path) in str(info.value) and "test split" in str(info.value)


def test_class_with_too_few_images(tmp_path: Path) -> None:
    data = good_dict(("n00000001", "n00000002", "n00000003"), per_class=20)
    keep = np.r_[0:20, 20:30, 40:60]  # class n00000002 keeps only 10 images
    data = {"keys": data["keys"][keep], "embeddings": data["embeddings"][keep]}
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    split = load_split(tmp_path, MINI, "center", "test")
    EpisodeSampler(split, 3, 1, 9, make_rng(0))  # 10 images suffice for K+Q = 10
    with pytest.raises(
        DataError, match=r"class n00000002 has 10 images, fewer than the K\+Q = 1\+15 = 16"
    ) as info:
        EpisodeSampler(split, 3, 1, 15, make_rng(0))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_sampler_for_hints_at_the_config_key(root: Path) -> None:
    cfg = load_experiment("mini_1shot")  # validation wants 600 - 1 queries of 20-image classes
    with pytest.raises(DataError, match="lower total_examples_per_class") as info:
        sampler_for(cfg, root, "val", make_rng(0))
    assert "val_embeddings.pkl" in str(info.value)
    with pytest.raises(DataError, match="lower num_classes"):
        sampler_for(cfg.with_overrides({"num_classes": 7}), root, "train", make_rng(0), num_val=2)


# --- hostile pickles (issue 22 item 1) ------------------------------------------------------


class _RunsCode:
    """A pickle payload that would create `marker` if the loader called the global it names."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def _python2_pickle(keys: list[str], embeddings: np.ndarray) -> bytes:
    """The opcodes Python 2's `cPickle.dump(d, f, 2)` writes for {keys: [str], embeddings}:
    py2 `str` is SHORT_BINSTRING (read back as latin-1 text), the array data too."""

    def binstring(text: bytes) -> bytes:
        return (b"U" + bytes([len(text)]) + text) if len(text) < 256 else (
            b"T" + len(text).to_bytes(4, "little") + text
        )

    rows, cols = embeddings.shape
    out = b"\x80\x02}(" + binstring(b"keys") + b"](" + b"".join(binstring(k.encode()) for k in keys)
    out += b"e" + binstring(b"embeddings")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + binstring(b"b")
    out += b"\x87R(K\x01" + b"M" + rows.to_bytes(2, "little") + b"M" + cols.to_bytes(2, "little")
    out += b"\x86cnumpy\ndtype\n" + binstring(b"f4") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + binstring(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + binstring(embeddings.astype("<f4").tobytes()) + b"tbu."
    return out


def test_python2_protocol2_pickle_still_loads(tmp_path: Path) -> None:
    data = good_dict()
    keys = [str(k) for k in data["keys"]]
    content = _python2_pickle(keys, data["embeddings"])
    assert pickle.loads(content, encoding="latin1")["keys"] == keys  # the opcodes are valid
    embeddings_path(tmp_path, MINI, "center", "test").parent.mkdir(parents=True)
    embeddings_path(tmp_path, MINI, "center", "test").write_bytes(content)
    split = load_split(tmp_path, MINI, "center", "test")
    np.testing.assert_allclose(np.concatenate(split.embeddings),
                               normalized(data["embeddings"]), rtol=1e-5)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_every_protocol_with_str_or_bytes_keys_loads(
    tmp_path: Path, protocol: int, as_bytes: bool
) -> None:
    data = good_dict()
    keys = [str(k) for k in data["keys"]]
    data["keys"] = [k.encode() for k in keys] if as_bytes else keys
    data["labels"] = np.int64(0)  # a NumPy scalar is admitted too
    path = embeddings_path(tmp_path, MINI, "center", "test")
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    split = load_split(tmp_path, MINI, "center", "test")
    np.testing.assert_allclose(np.concatenate(split.embeddings),
                               normalized(data["embeddings"]), rtol=1e-5)


def test_pickle_naming_a_global_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    data = good_dict()
    data["labels"] = _RunsCode(marker)
    path = write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    err = expect_error(tmp_path, "refused global posix.mkdir")
    assert str(path) in str(err)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [np.array([1, "x"], dtype=object), np.zeros(2, dtype=[("a", "f4")])],
    ids=["object", "record"],
)
def test_object_and_record_arrays_are_refused(tmp_path: Path, value: np.ndarray) -> None:
    data = good_dict()
    data["labels"] = value
    write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    expect_error(tmp_path, "is not admitted")


def test_evaluate_exits_2_on_a_code_carrying_pickle(tmp_path: Path) -> None:
    import subprocess
    import sys

    marker = tmp_path / "payload-ran"
    data = good_dict()
    data["keys"] = [_RunsCode(marker)]
    write(embeddings_path(tmp_path, MINI, "center", "test"), data)
    from leo_core.ckpt_format import save_npz
    from leo_core.model import init_parameters

    weights = tmp_path / "weights.npz"
    save_npz(weights, init_parameters(load_experiment("mini_1shot", []), 0))
    proc = subprocess.run(
        [sys.executable, "-m", "leo_core.evaluate", "--experiment", "mini_1shot",
         "--data-root", str(tmp_path), "--split", "test", "--checkpoint", str(weights)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "refused global posix.mkdir" in proc.stderr
    assert not marker.exists()
