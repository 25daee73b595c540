"""Synthetic stand-ins for the LEO embedding pickles (miniImageNet, tieredImageNet).

    python -m leo_core.synthetic --out DIR --dataset miniImageNet|tieredImageNet \\
        [--scale F] [--images-per-class N] [--crop center|multiview|both] [--seed S]

writes ``DIR/<dataset>/<crop>/<train|val|test>_embeddings.pkl`` in the original format: a
dict with ``"keys"`` (a numpy array of ``<row>-<wnid>-<wnid>_<8 digits>.JPEG`` strings: ``str``
for ``center``, ``bytes`` for ``multiview``, as in the original data), ``"embeddings"``
(float32 ``(n, 640)``) and ``"labels"`` (int64 class index within the split), pickled with
protocol 4 (readable by any Python 3 and by ``pickle.load(f, encoding="latin1")``).

Sizes, full by default: miniImageNet 64 / 16 / 20 classes x 600 images; tieredImageNet
351 / 97 / 160 classes x 732-1300 images (uniform per class), in 20 / 6 / 8 categories.
``--scale F`` (0 < F <= 1) multiplies class and image counts (at least 5 classes per split,
at least 20 images per class, at least 2 super-classes); ``--images-per-class N`` fixes the
number of images of every class. ``--crop multiview`` (miniImageNet only) writes the same
images and keys with ``bytes`` keys and less crop noise (several crops averaged).

The principle: real embeddings come from a network trained on the training classes, so
new classes are described in the features that network learned, and are a little less
separable than the training classes. An earlier family drew each split's super-classes
on its own; super-classes carried ~92% of the between-class variance, the training
classes varied in only ~16 latent directions and the test classes elsewhere, and LEO's
linear encoder, which learns the training classes' subspace, got WORSE on new classes
with training. This family fixes that the way the real data behave.

Generative model (all draws seeded by ``--seed``; every class and crop has its own
``SeedSequence`` stream, so a class's images do not depend on which crops are written).
One *family* per dataset, shared by its three splits (``GenerativeModel``, ``MODELS``):

* ``r = 64`` latent factors mapped to the 640 features by a fixed random linear map ``A``
  (Gaussian, ``r x 640``) plus a per-feature bias ``b ~ N(-0.3, 0.5^2)``: features are
  correlated and some are rarely active;
* **miniImageNet — a random split**: 25 super-classes in ONE pool (centres
  ``s = mu0 + 1.5 * N(0, I_r)``), 100 classes under them (``m_c = s + 0.45 * N(0, I_r)``),
  then every class assigned to train / val / test at random (64 / 16 / 20), as
  miniImageNet's classes were drawn at random from ImageNet: test classes are new
  classes, mostly of kinds the training classes cover;
* **tieredImageNet — disjoint categories**: every split has its own super-classes
  (20 / 6 / 8, as the real dataset's categories), with weaker super-classes
  (``s = mu0 + 1.0 * N``, ``m_c = s + 0.7 * N``) so that the 351 training classes span
  the latent space;
* **a representation fitted to the training classes** (both): the latent code is mapped
  by ``P = V diag(g) V^T``, where ``V`` are the eigenvectors of the training classes'
  between-class covariance (eigenvalues ``l``) and ``g = sqrt((l + k) / (l_max + k))``,
  ``k`` chosen so that a direction the training classes do not vary along keeps a gain
  ``fit_floor`` (mini 0.35, tiered 0.6): features amplify what separates training classes,
  and new classes that vary elsewhere are a little less separable;
* an image ``z = m_c + 3.7 * N(0, I_r)`` (tieredImageNet 1.9): within-class spread of the
  order of the spread between classes, so classes overlap;
* a crop ``v = z + 1.1 * N(0, I_r)`` (pose, framing; multiview 0.55 as it averages
  crops), per-feature noise ``0.6 * N(0, I_640)`` (multiview 0.4) and a per-image gain
  ``g ~ LogNormal(0, 0.25)``;
* the embedding ``x = ReLU(g * ((v - mu0) P + mu0) @ A + b + noise))``: non-negative,
  about half of the features exactly zero (post-ReLU-like).

Class names are distinct fake wnids (``n`` + 8 digits); the splits' classes are disjoint.

Measured 5-way nearest-class-mean (NCM) accuracy on the full-size data (unit-normalised
embeddings; prototype = mean of the K supports; 15 queries per class; 2,000 tasks, 95%
interval about +-0.006; ``leo_core.data.nearest_class_mean_accuracy``):

=================================  ============  ============  ============
1-shot / 5-shot                    train         val           test
=================================  ============  ============  ============
miniImageNet center, seed 0        0.60 / 0.80   0.54 / 0.76   0.58 / 0.78
miniImageNet center, seed 1        0.65 / 0.83   0.57 / 0.76   0.57 / 0.79
miniImageNet center, seed 2        0.62 / 0.82   0.56 / 0.76   0.60 / 0.80
miniImageNet multiview, seed 0     0.62 / 0.82   0.56 / 0.78   0.60 / 0.80
tieredImageNet center, seed 0 (*)  0.72 / 0.91   0.56 / 0.81   0.61 / 0.84
=================================  ============  ============  ============

(*) measured at ``--scale 0.3`` (105 / 29 / 48 classes, 220-390 images), which keeps the
full data's chance that two classes of a split share a category.

For comparison, LEO itself reports 0.618 / 0.776 on the real miniImageNet embeddings and
0.663 / 0.814 on tieredImageNet: NCM here is near those numbers, so the synthetic tasks
are about as hard as the real ones. Trained LEO on this family (leo_core/README.md, Results) does
improve on NEW classes (mini_5shot, 300 steps, 1,000 meta-test tasks: untrained
62.9%, trained 72.3%, NCM 78.1%). Full-size
miniImageNet takes ~2 s to write; full-size tieredImageNet ~20 s with a peak of ~1.9 GB
(on an idle machine).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leo_core.cli_common import write_files
from leo_core.config import CROPS, DATASETS, ConfigError
from leo_core.data import EMBEDDING_DIM, SPLITS, DataError, embeddings_path

PICKLE_PROTOCOL = 4
MIN_CLASSES = 5
MIN_IMAGES = 20
MIN_SUPER_CLASSES = 2


@dataclass(frozen=True)
class DatasetShape:
    classes: tuple[int, int, int]  # train, val, test
    # "random": one pool of super-classes (their sum) shared by the splits, and every class
    # assigned to a split at random (miniImageNet's split is random over ImageNet classes).
    # "category": each split its own super-classes (tieredImageNet's splits are disjoint
    # categories).
    super_classes: tuple[int, int, int]
    images: tuple[int, int]  # inclusive range of images per class
    split_by: str


SHAPES = {
    "miniImageNet": DatasetShape((64, 16, 20), (16, 4, 5), (600, 600), "random"),
    "tieredImageNet": DatasetShape((351, 97, 160), (20, 6, 8), (732, 1300), "category"),
}


@dataclass(frozen=True)
class GenerativeModel:
    """Parameters of the synthetic embedding family (see the module docstring)."""

    latent_dim: int = 64
    super_scale: float = 1.5
    class_scale: float = 0.45
    image_scale: float = 3.7
    # Crop-dependent variation: latent (pose, framing) and per-feature noise. Multiview
    # embeddings average several crops of the image, so they carry less of it.
    view_scale: tuple[float, float] = (1.1, 0.55)  # center, multiview
    feature_noise: tuple[float, float] = (0.6, 0.4)  # center, multiview
    bias_mean: float = -0.3
    bias_std: float = 0.5
    gain_std: float = 0.25
    # The representation is fitted to the training classes: a latent direction keeps a
    # gain that grows with the training classes' between-class spread along it, and at
    # least `fit_floor` (1.0 = no fitting).
    fit_floor: float = 0.35


MODELS = {
    "miniImageNet": GenerativeModel(),
    # Disjoint categories: weaker super-classes, so that the 351 training classes span the
    # latent space as a real network's training classes span its features.
    "tieredImageNet": GenerativeModel(super_scale=1.0, class_scale=0.7, image_scale=1.9,
                                      fit_floor=0.6),
}


def _stream(seed: int, *path: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *path])))


@dataclass(frozen=True)
class _Family:
    mu0: np.ndarray  # [r]
    mixing: np.ndarray  # [r, D]
    bias: np.ndarray  # [D]


def _family(seed: int, dataset_id: int, model: GenerativeModel) -> _Family:
    rng = _stream(seed, dataset_id, 0)
    r = model.latent_dim
    return _Family(
        mu0=rng.standard_normal(r),
        mixing=rng.standard_normal((r, EMBEDDING_DIM)) / math.sqrt(r),
        bias=model.bias_mean + model.bias_std * rng.standard_normal(EMBEDDING_DIM),
    )


@dataclass(frozen=True)
class _SplitPlan:
    name: str
    index: int
    wnids: tuple[str, ...]  # sorted
    images: tuple[int, ...]
    class_means: np.ndarray  # [C, r]
    class_ids: tuple[int, ...]  # dataset-wide index of each class (keys its random streams)


def _super_class_count(count: int, full_count: int, full_supers: int) -> int:
    """Super-classes for `count` classes keeping the full data's chance that two classes
    share a super-class (so episodes of shrunk data are about as hard as full-size ones)."""
    if full_count <= 1:
        return count
    same = (full_count / full_supers - 1) / (full_count - 1)
    return min(count, max(MIN_SUPER_CLASSES, round(count / (1 + same * (count - 1)))))


def _class_means(
    rng: np.random.Generator, count: int, supers: int, model: GenerativeModel, family: _Family
) -> np.ndarray:
    centres = family.mu0 + model.super_scale * rng.standard_normal((supers, model.latent_dim))
    # Every super-class gets at least one class; the rest are spread at random.
    owner = np.concatenate([np.arange(supers), rng.integers(0, supers, count - supers)])
    rng.shuffle(owner)
    return centres[owner] + model.class_scale * rng.standard_normal((count, model.latent_dim))


def _plans(
    seed: int,
    dataset: str,
    scale: float,
    images_per_class: int | None,
    model: GenerativeModel,
    family: _Family,
) -> list[_SplitPlan]:
    shape = SHAPES[dataset]
    dataset_id = DATASETS.index(dataset)
    classes = [max(MIN_CLASSES, round(c * scale)) for c in shape.classes]
    total = sum(classes)
    rng = _stream(seed, dataset_id, 1)
    numbers = rng.choice(10**8, size=total, replace=False)
    pool_rng = _stream(seed, dataset_id, 2)
    if shape.split_by == "random":
        supers = _super_class_count(total, sum(shape.classes), sum(shape.super_classes))
        pool = _class_means(pool_rng, total, supers, model, family)
        order = pool_rng.permutation(total)  # the random class -> split assignment
        means = [pool[order[a:b]] for a, b in _bounds(classes)]
    else:
        means = [
            _class_means(
                _stream(seed, dataset_id, 2, index),
                count,
                _super_class_count(count, shape.classes[index], shape.super_classes[index]),
                model,
                family,
            )
            for index, count in enumerate(classes)
        ]
    plans = []
    for index, (name, (a, b)) in enumerate(zip(SPLITS, _bounds(classes), strict=True)):
        count = b - a
        names = [f"n{n:08d}" for n in numbers[a:b]]
        order = np.argsort(names)  # rows are stored class by class in wnid order
        if images_per_class is not None:
            images = (images_per_class,) * count
        else:
            low = max(MIN_IMAGES, round(shape.images[0] * scale))
            high = max(low, round(shape.images[1] * scale))
            drawn = _stream(seed, dataset_id, 5, index).integers(low, high + 1, count)
            images = tuple(int(drawn[i]) for i in order)
        plans.append(
            _SplitPlan(
                name,
                index,
                tuple(names[i] for i in order),
                images,
                means[index][order],
                tuple(int(a + i) for i in order),
            )
        )
    return plans


def _bounds(counts: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(counts)
    return [(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]


def _fitted_map(train_means: np.ndarray, model: GenerativeModel) -> np.ndarray:
    """The latent -> representation map [r, r] fitted to the training classes.

    Symmetric, with the eigenvectors of the training classes' between-class covariance
    (eigenvalues l) and gains sqrt((l + k) / (l_max + k)), k set so that a direction
    along which training classes do not vary keeps `fit_floor`.
    """
    floor = model.fit_floor
    if floor >= 1.0:
        return np.eye(model.latent_dim)
    centred = train_means - train_means.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / max(len(train_means) - 1, 1))
    values = np.maximum(values, 0.0)
    top = values.max()
    kappa = top * floor**2 / (1.0 - floor**2)
    gains = np.sqrt((values + kappa) / (top + kappa))
    return (vectors * gains) @ vectors.T


def _class_embeddings(
    seed: int,
    dataset_id: int,
    plan: _SplitPlan,
    c: int,
    crops: Sequence[str],
    model: GenerativeModel,
    family: _Family,
    fitted: np.ndarray,
) -> dict[str, np.ndarray]:
    n = plan.images[c]
    class_id = plan.class_ids[c]
    rng = _stream(seed, dataset_id, 3, class_id)
    latent = plan.class_means[c] + model.image_scale * rng.standard_normal((n, model.latent_dim))
    gain = np.exp(model.gain_std * rng.standard_normal(n)).astype(np.float32)
    out = {}
    for crop in crops:
        which = CROPS.index(crop)
        crop_rng = _stream(seed, dataset_id, 6 + which, class_id)
        view = latent + model.view_scale[which] * crop_rng.standard_normal((n, model.latent_dim))
        features = (view - family.mu0) @ fitted + family.mu0
        x = crop_rng.standard_normal((n, EMBEDDING_DIM), dtype=np.float32)
        x *= np.float32(model.feature_noise[which])
        x += (features @ family.mixing + family.bias).astype(np.float32)
        x *= gain[:, None]
        np.maximum(x, 0.0, out=x)
        out[crop] = x
    return out


def _check_args(
    dataset: str, scale: float, images_per_class: int | None, crops: Sequence[str]
) -> None:
    if dataset not in SHAPES:
        raise ConfigError(f"dataset must be one of {', '.join(SHAPES)}, not {dataset!r}")
    if not (isinstance(scale, (int, float)) and 0.0 < scale <= 1.0):
        raise ConfigError(f"scale must be in (0, 1], got {scale!r}")
    if images_per_class is not None and (
        isinstance(images_per_class, bool)
        or not isinstance(images_per_class, int)
        or images_per_class < 2
    ):
        raise ConfigError(f"images_per_class must be an integer >= 2, got {images_per_class!r}")
    if not crops:
        raise ConfigError("crops must name at least one crop")
    for crop in crops:
        if crop not in CROPS:
            raise ConfigError(f"crop must be one of {', '.join(CROPS)}, not {crop!r}")
    if dataset == "tieredImageNet" and tuple(crops) != ("center",):
        raise ConfigError("tieredImageNet embeddings exist only for crop center")


def _write_pickle(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pickle.dump(data, f, protocol=PICKLE_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_dataset(
    out: str | Path,
    dataset: str,
    *,
    scale: float = 1.0,
    images_per_class: int | None = None,
    seed: int = 0,
    crops: Sequence[str] = ("center",),
    quiet: bool = False,
    model: GenerativeModel | None = None,
) -> Path:
    """Write the three splits of a synthetic `dataset` under `out`; return `out/<dataset>`.

    Splits are generated and written one at a time (peak memory about twice the largest
    split's embeddings: ~1.9 GB for full-size tieredImageNet train).
    """
    crops = tuple(dict.fromkeys(crops))
    _check_args(dataset, scale, images_per_class, crops)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    model = model or MODELS[dataset]
    dataset_id = DATASETS.index(dataset)
    family = _family(seed, dataset_id, model)
    plans = _plans(seed, dataset, scale, images_per_class, model, family)
    fitted = _fitted_map(plans[0].class_means, model)
    for plan in plans:
        started = time.perf_counter()
        total = sum(plan.images)
        arrays = {crop: np.empty((total, EMBEDDING_DIM), dtype=np.float32) for crop in crops}
        labels = np.repeat(np.arange(len(plan.wnids), dtype=np.int64), plan.images)
        keys: list[str] = []
        row = 0
        for c, wnid in enumerate(plan.wnids):
            n = plan.images[c]
            for crop, x in _class_embeddings(
                seed, dataset_id, plan, c, crops, model, family, fitted
            ).items():
                arrays[crop][row : row + n] = x
            keys.extend(f"{row + j}-{wnid}-{wnid}_{j:08d}.JPEG" for j in range(n))
            row += n
        str_keys = np.array(keys)
        del keys
        for crop in crops:
            path = embeddings_path(out, dataset, crop, plan.name)
            data = {
                "keys": str_keys if crop == "center" else np.char.encode(str_keys, "ascii"),
                "embeddings": arrays[crop],
                "labels": labels,
            }
            _write_pickle(path, data)
            if not quiet:
                size = path.stat().st_size / 2**20
                print(
                    f"wrote {path}: {len(plan.wnids)} classes, {total} images, "
                    f"{size:.1f} MiB ({time.perf_counter() - started:.1f} s)",
                    flush=True,
                )
            del data
        del arrays
    return Path(out) / dataset


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m leo_core.synthetic",
        description="Write synthetic LEO embedding pickles in the original format and layout.",
    )
    parser.add_argument("--out", required=True, help="data root; writes OUT/<dataset>/<crop>/*.pkl")
    parser.add_argument("--dataset", required=True, choices=tuple(SHAPES))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink class and image counts (0 < F <= 1)"
    )
    parser.add_argument("--images-per-class", type=int, default=None, help="exact images per class")
    parser.add_argument("--crop", choices=(*CROPS, "both"), default="center")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    crops = CROPS if args.crop == "both" else (args.crop,)
    return write_files(args.out, lambda: write_dataset(
        args.out, args.dataset, scale=args.scale, images_per_class=args.images_per_class,
        seed=args.seed, crops=crops), user_errors=(ConfigError, DataError))


if __name__ == "__main__":
    sys.exit(main())
