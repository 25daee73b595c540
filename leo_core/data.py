"""LEO data: the original embedding pickles and the N-way K-shot episode sampler.

NumPy only (no MindSpore), so the launcher and tools can import it cheaply.

Layout (as in the original DeepMind `data.py`)::

    <root>/<miniImageNet|tieredImageNet>/<center|multiview>/<train|val|test>_embeddings.pkl

Each pickle is a dict with ``"keys"`` (one ``<anything>-<wnid>-<wnid>_<file>`` key per row,
``str`` or ``bytes``) and ``"embeddings"`` (float32, ``(n, 640)``); a ``"labels"`` entry
exists too and is ignored. Rows are grouped by class (the key's second field) and every
embedding is scaled to unit L2 norm once, at load time, with TensorFlow's
``l2_normalize`` semantics ``x / sqrt(max(sum(x**2), 1e-12))``.

An episode (task) shuffles the split's classes and takes the first N; a class's label is
its position in that order. From each class it draws K + Q images without replacement:
the first K are the support ("tr") set, the other Q the query ("val") set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leo_core import safe_pickle
from leo_core.config import CROPS, DATASETS, ExperimentConfig

EMBEDDING_DIM = 640
SPLITS = ("train", "val", "test")
L2_EPSILON = 1e-12  # tf.nn.l2_normalize's default epsilon (on the squared norm)


class DataError(ValueError):
    """Missing or malformed embedding data; the one-line message names the file and the problem."""


def embeddings_path(data_root: str | Path, dataset_name: str, crop: str, split: str) -> Path:
    """`<root>/<dataset>/<crop>/<split>_embeddings.pkl`."""
    if dataset_name not in DATASETS:
        raise DataError(f"unknown dataset {dataset_name!r}; expected one of {', '.join(DATASETS)}")
    if crop not in CROPS:
        raise DataError(f"unknown embedding crop {crop!r}; expected one of {', '.join(CROPS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(data_root) / dataset_name / crop / f"{split}_embeddings.pkl"


def l2_normalize(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm, as `tf.nn.l2_normalize(x, axis=-1)` (float32).

    With `out=x` the array is normalised in place (no temporary of the array's size).
    """
    x = np.asarray(x, dtype=np.float32)
    return _scale_rows(x, _squared_norms(x), out=out)


def _squared_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", x, x, dtype=np.float32)


def _scale_rows(x: np.ndarray, squared: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    scale = 1.0 / np.sqrt(np.maximum(squared, np.float32(L2_EPSILON)))
    return np.multiply(x, scale[..., None], out=out)


@dataclass(frozen=True)
class Split:
    """One split of a dataset, its images grouped by class.

    `embeddings[i]` holds the float32 `[n_i, 640]` embeddings of class `class_names[i]`,
    every row already at unit L2 norm (`load_split` guarantees it; build other Splits
    with `l2_normalize`). `source` names the file(s) it came from, for error messages.
    """

    name: str
    class_names: tuple[str, ...]
    embeddings: tuple[np.ndarray, ...]
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return sum(len(e) for e in self.embeddings)

    def describe(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.name} split{where}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_pickle(path: Path) -> tuple[list[str], np.ndarray]:
    """The validated keys (as str) and unit-L2-normalised float32 embeddings of one pickle."""
    try:
        with open(path, "rb") as f:
            raw = safe_pickle.load(f)
    except safe_pickle.UnsafePickleError as err:
        raise DataError(f"{path}: not loaded: {err} (only dicts, lists, strings, numbers and "
                        "numeric or string NumPy arrays are admitted)") from None
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file (expected <root>/<dataset>/<crop>/<split>_embeddings.pkl; "
            "`python -m leo_core.synthetic` writes synthetic data in this layout)"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an embeddings pickle") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to load it") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable pickle ({_short(detail, 120)})") from None
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: expected a dict with 'keys' and 'embeddings', got {type(raw).__name__}"
        )
    for name in ("keys", "embeddings"):
        if name not in raw:
            found = ", ".join(sorted(map(str, raw))) or "none"
            raise DataError(f"{path}: missing key {name!r} (found: {found})")

    try:
        embeddings = np.asarray(raw["embeddings"])
    except Exception:  # noqa: BLE001 - ragged or otherwise unconvertible
        raise DataError(f"{path}: 'embeddings' is not a numeric array") from None
    if embeddings.dtype.kind not in "fiu":
        raise DataError(f"{path}: 'embeddings' is not a numeric array (dtype {embeddings.dtype})")
    if embeddings.ndim != 2 or embeddings.shape[1] != EMBEDDING_DIM:
        raise DataError(
            f"{path}: 'embeddings' has shape {embeddings.shape}; expected (n, {EMBEDDING_DIM})"
        )

    keys_raw = raw["keys"]
    if isinstance(keys_raw, np.ndarray):
        if keys_raw.ndim != 1:
            raise DataError(f"{path}: 'keys' has shape {keys_raw.shape}; expected (n,)")
        keys_raw = keys_raw.tolist()
    elif not isinstance(keys_raw, (list, tuple)):
        raise DataError(f"{path}: 'keys' is a {type(keys_raw).__name__}, not a list or array")
    if len(keys_raw) != len(embeddings):
        raise DataError(
            f"{path}: {len(keys_raw)} keys but {len(embeddings)} embeddings (lengths must match)"
        )
    if len(keys_raw) == 0:
        raise DataError(f"{path}: holds no examples")
    keys = [_as_str(path, i, key) for i, key in enumerate(keys_raw)]
    del raw, keys_raw

    if embeddings.dtype != np.float32:
        embeddings = embeddings.astype(np.float32)
    elif not (embeddings.flags.writeable and embeddings.flags.c_contiguous):
        embeddings = np.array(embeddings, dtype=np.float32, order="C")
    squared = _squared_norms(embeddings)
    if not np.isfinite(squared).all():
        row = int(np.flatnonzero(~np.isfinite(squared))[0])
        raise DataError(f"{path}: embedding row {row} holds NaN or infinite values")
    _scale_rows(embeddings, squared, out=embeddings)
    return keys, embeddings


def _as_str(path: Path, index: int, key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: key {index} {_short(key)} is not valid UTF-8") from None
    raise DataError(f"{path}: key {index} is a {type(key).__name__}, not str or bytes")


def _class_of_keys(path: Path, keys: list[str], first_row: int = 0) -> tuple[list[str], list[str]]:
    """Class (2nd field) and image file (3rd field) of every key, checking the format."""
    classes: list[str] = []
    files: list[str] = []
    for i, key in enumerate(keys):
        fields = key.split("-")
        if len(fields) != 3 or not fields[1] or not fields[2].startswith(fields[1] + "_"):
            raise DataError(
                f"{path}: malformed key {first_row + i} {_short(key)}; expected "
                "'<anything>-<class>-<class>_<file>' (three '-'-separated fields, the third "
                "starting with the class and '_')"
            )
        classes.append(fields[1])
        files.append(fields[2])
    return classes, files


def load_split(
    data_root: str | Path,
    dataset_name: str,
    crop: str,
    split: str,
    *,
    train_on_val: bool = False,
) -> Split:
    """Load one split, grouped by class (sorted wnids) and unit-L2-normalised.

    `train_on_val` affects only `split == "train"`: the val pickle's rows are appended to
    the train split's, as in the original (the paper's reported numbers train this way).
    """
    if dataset_name == "tieredImageNet" and crop != "center":
        raise DataError(f"tieredImageNet embeddings exist only for crop 'center', not {crop!r}")
    paths = [embeddings_path(data_root, dataset_name, crop, split)]
    if split == "train" and train_on_val:
        paths.append(embeddings_path(data_root, dataset_name, crop, "val"))

    all_classes: list[str] = []
    all_files: list[str] = []
    origin: list[tuple[Path, int]] = []  # (file, first row) of each concatenated part
    arrays: list[np.ndarray] = []
    for path in paths:
        keys, embeddings = _read_pickle(path)
        classes, files = _class_of_keys(path, keys)
        origin.append((path, len(all_classes)))
        all_classes.extend(classes)
        all_files.extend(files)
        arrays.append(embeddings)
        del keys
    source = " + ".join(str(p) for p in paths)

    if len(set(all_files)) != len(all_files):
        seen: set[str] = set()
        for row, name in enumerate(all_files):
            if name in seen:
                path = next(p for p, start in reversed(origin) if start <= row)
                raise DataError(f"{path}: duplicate image {_short(name)} (keys must be unique)")
            seen.add(name)
    del all_files

    embeddings = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    del arrays

    class_names, inverse = np.unique(np.asarray(all_classes), return_inverse=True)
    del all_classes
    counts = np.bincount(inverse, minlength=len(class_names))
    if np.all(inverse[1:] >= inverse[:-1]):
        grouped = embeddings  # already stored class by class, in sorted order: no copy
    else:
        grouped = embeddings[np.argsort(inverse, kind="stable")]
        del embeddings
    bounds = np.cumsum(counts)[:-1]
    return Split(
        name=split,
        class_names=tuple(str(c) for c in class_names),
        embeddings=tuple(np.split(grouped, bounds)),
        source=source,
    )


def make_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """A PCG64 generator seeded by `SeedSequence([seed, stream])`.

    Different streams (e.g. one per data-parallel rank, or train vs. validation) are
    statistically independent; the same (seed, stream) always gives the same draws.
    """
    for name, value in (("seed", seed), ("stream", stream)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream)])))


@dataclass
class EpisodeBatch:
    """A batch of B episodes: support (tr) and query (val) embeddings and labels."""

    tr_x: np.ndarray  # [B, N, K, D] float32
    tr_y: np.ndarray  # [B, N, K] int32
    val_x: np.ndarray  # [B, N, Q, D] float32
    val_y: np.ndarray  # [B, N, Q] int32

    @property
    def num_tasks(self) -> int:
        return int(self.tr_x.shape[0])


def _one_block(arrays: tuple[np.ndarray, ...]) -> np.ndarray | None:
    """The single C-contiguous [n, D] array that `arrays` are consecutive row-slices of, if any."""
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    if base.dtype != np.float32 or base.shape[1] != EMBEDDING_DIM:
        return None
    position = base.__array_interface__["data"][0]
    for array in arrays:
        if array.base is not base or not array.flags.c_contiguous:
            return None
        if array.__array_interface__["data"][0] != position:
            return None
        position += array.nbytes
    end = base.__array_interface__["data"][0] + base.nbytes
    return base if position == end else None


class EpisodeSampler:
    """Draws N-way K-shot episodes with Q queries per class from one Split.

    `rng` is the only source of randomness; saving `rng.bit_generator.state` and restoring
    it resumes the exact sequence of episodes.
    """

    def __init__(
        self,
        split: Split,
        num_classes: int,
        num_tr: int,
        num_val: int,
        rng: np.random.Generator,
    ) -> None:
        for name, value, low in (
            ("num_classes", num_classes, 1),
            ("num_tr", num_tr, 1),
            ("num_val", num_val, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.split = split
        self.num_classes = int(num_classes)
        self.num_tr = int(num_tr)
        self.num_val = int(num_val)
        self.rng = rng
        if split.num_classes < self.num_classes:
            raise DataError(
                f"{split.describe()}: {split.num_classes} classes, fewer than the "
                f"{self.num_classes} an episode needs"
            )
        needed = self.num_tr + self.num_val
        counts = np.array([len(e) for e in split.embeddings], dtype=np.int64)
        short = np.flatnonzero(counts < needed)
        if short.size:
            worst = int(short[np.argmin(counts[short])])
            raise DataError(
                f"{split.describe()}: class {split.class_names[worst]} has {counts[worst]} images, "
                f"fewer than the K+Q = {self.num_tr}+{self.num_val} = {needed} an episode draws"
                + (f" ({short.size} classes are too small)" if short.size > 1 else "")
            )
        block = _one_block(split.embeddings)
        self._data = block if block is not None else np.concatenate(split.embeddings)
        self._counts = counts
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """Rows (into the sampler's data) of `batch_size` episodes: int64 [B, N, K+Q].

        Consumes exactly the randomness of one `sample(batch_size)` call.
        """
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n, size = self.num_classes, self.num_tr + self.num_val
        rng, counts, offsets = self.rng, self._counts, self._offsets
        rows = np.empty((int(batch_size), n, size), dtype=np.int64)
        total_classes = len(counts)
        for task in range(int(batch_size)):
            chosen = rng.permutation(total_classes)[:n]
            for position, c in enumerate(chosen):
                rows[task, position] = offsets[c] + rng.choice(counts[c], size, replace=False)
        return rows

    def sample(self, batch_size: int, tasks: slice | None = None) -> EpisodeBatch:
        """`batch_size` episodes (or only `tasks`, a slice of them).

        The indices of all `batch_size` episodes are always drawn, so every data-parallel
        rank advances its rng identically; only the selected tasks' embeddings are gathered.
        `sample(B, tasks=s)` equals `sample(B)` sliced with `s`.
        """
        if tasks is not None and not isinstance(tasks, slice):
            raise TypeError(f"tasks must be a slice or None, got {type(tasks).__name__}")
        rows = self.sample_indices(batch_size)
        return self.gather(rows if tasks is None else rows[tasks])

    def gather(self, rows: np.ndarray) -> EpisodeBatch:
        """The episodes of `rows` (from `sample_indices`, or a slice of them).

        Lets a caller draw a large batch once and materialise it in chunks: an evaluation
        batch of 200 tasks with 599 queries per class is 1.5 GB of float32.
        """
        rows = np.asarray(rows)
        n, size = self.num_classes, self.num_tr + self.num_val
        if rows.ndim != 3 or rows.shape[1:] != (n, size) or rows.dtype.kind not in "iu":
            raise ValueError(f"rows must be an integer array [B, {n}, {size}], got {rows.shape}")
        k, b = self.num_tr, rows.shape[0]
        labels = np.arange(n, dtype=np.int32)[None, :, None]
        return EpisodeBatch(
            tr_x=self._data[rows[:, :, :k]],
            tr_y=np.ascontiguousarray(np.broadcast_to(labels, (b, n, k))),
            val_x=self._data[rows[:, :, k:]],
            val_y=np.ascontiguousarray(np.broadcast_to(labels, (b, n, self.num_val))),
        )


    def support(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Support embeddings [B, N, K, D] and labels [B, N, K] of `rows` (no queries)."""
        rows = np.asarray(rows)
        b, n, k = rows.shape[0], self.num_classes, self.num_tr
        labels = np.arange(n, dtype=np.int32)[None, :, None]
        return self._data[rows[:, :, :k]], np.ascontiguousarray(np.broadcast_to(labels, (b, n, k)))

    def query_logits(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Logits `x @ w.T` [B, N, Q, M] of the query examples of `rows` (from
        `sample_indices`) under per-task classifier weights `weights` [B, M, D] (M = N for
        one classifier; several classifiers' weights concatenated share one pass).

        The same numbers as gathering the queries (`gather`) and multiplying, without the
        gather (599 queries per class are 7.7 MB per task): each class's contiguous
        block of embeddings is multiplied once by the weights of every task in `rows`
        that uses the class (one matrix product per class), then each task's query rows
        are picked from the [images x M] products.
        """
        rows = np.asarray(rows)
        b, n, size = rows.shape
        k, q = self.num_tr, size - self.num_tr
        weights = np.asarray(weights, np.float32)
        m = weights.shape[1]
        flat_rows = rows.reshape(b * n, size)
        classes = np.searchsorted(self._offsets, flat_rows[:, 0], side="right") - 1  # [B*N]
        out = np.empty((b * n, q, m), np.float32)
        order = np.argsort(classes, kind="stable")
        unique, starts = np.unique(classes[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for c, lo, hi in zip(unique, starts, ends, strict=True):
            slots = order[lo:hi]  # (task, position) pairs, flattened, that use class c
            w = weights[slots // n].reshape(-1, weights.shape[-1])  # [slots * M, D]
            first = self._offsets[c]
            block = self._data[first:first + self._counts[c]]
            products = (block @ w.T).reshape(len(block), len(slots), m)
            local = flat_rows[slots, k:] - first  # [slots, Q]
            out[slots] = products[local, np.arange(len(slots))[:, None]]
        return out.reshape(b, n, q, m)

    def query_vectors(self, rows: np.ndarray, tasks: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Query embeddings [C, D] of flat query `positions` (class * Q + j) of `tasks` in `rows`."""
        q = self.num_val
        return self._data[np.asarray(rows)[tasks, positions // q, self.num_tr + positions % q]]

    @functools.cached_property
    def max_norm(self) -> float:
        """The largest Euclidean norm of any embedding (1 for unit-normalised data)."""
        return float(np.sqrt(_squared_norms(self._data).max()))


def sampler_for(
    cfg: ExperimentConfig,
    data_root: str | Path,
    split: str,
    rng: np.random.Generator,
    *,
    num_val: int | None = None,
) -> EpisodeSampler:
    """The sampler an experiment uses for `split`.

    Q = `num_val_examples_per_class` for "train" and `total_examples_per_class - K` for
    "val"/"test", unless `num_val` is given. Dataset, crop and `train_on_val` come from `cfg`.
    """
    data = load_split(
        data_root, cfg.dataset_name, cfg.embedding_crop, split, train_on_val=cfg.train_on_val
    )
    if num_val is None:
        queries = cfg.num_val_examples_per_class if split == "train" else cfg.eval_queries_per_class
        hint_key = "num_val_examples_per_class" if split == "train" else "total_examples_per_class"
    else:
        queries, hint_key = num_val, ""
    try:
        return EpisodeSampler(data, cfg.num_classes, cfg.num_tr_examples_per_class, queries, rng)
    except DataError as err:
        if "fewer than the K+Q" in str(err) and hint_key:
            raise DataError(f"{err}; lower {hint_key} for this data") from None
        if "classes, fewer than" in str(err):
            raise DataError(f"{err}; lower num_classes for this data") from None
        raise


def class_means(tr_x: np.ndarray) -> np.ndarray:
    """Nearest-class-mean prototypes [B, N, D] float64: the mean of each class's K supports."""
    return tr_x.astype(np.float64).mean(axis=2)


def _float32_dot_error(d: int) -> float:
    """Bound on |fl32(x.m') - x.m| / (|x| |m|) for float32 x, m' = float32(m), D terms, any
    summation order (Higham's gamma_D for the sum, plus one rounding of m)."""
    u = 2.0**-24
    return (d * u / (1 - d * u) + u) * (1 + u)


def nearest_class_mean_predictions(products: np.ndarray, means: np.ndarray, query_norm: float,
                                   queries) -> np.ndarray:
    """Nearest-class-mean labels [B, P] from float32 products `x . float32(m)` [B, P, N].

    The nearest mean in Euclidean distance maximises x.m - |m|^2/2 (|x|^2 is the same for
    every class). Products in float32 avoid a float64 copy of every query; where the top
    two scores are closer than the float32 rounding bound (|x| <= `query_norm`), the
    query is scored again in float64, as `-2 x.m + |m|^2` over `queries(tasks, positions)`
    [C, D]: the same labels as computing everything in float64.
    """
    half = 0.5 * np.einsum("bnd,bnd->bn", means, means)  # [B, N]
    # Class by class over [B, P] rows (faster than N-element reductions): the best score,
    # its class (the first on ties, as argmax) and the runner-up.
    best = products[..., 0] - half[:, :1]
    predicted = np.zeros(best.shape, np.int64)
    second = np.full(best.shape, -np.inf)
    for c in range(1, products.shape[-1]):
        score = products[..., c] - half[:, c:c + 1]
        better = score > best
        predicted[better] = c
        second = np.where(better, best, np.maximum(second, score))
        best = np.maximum(best, score)
    norms = np.sqrt(2 * half).max(axis=-1)[:, None]  # the largest |m| of each task
    # Two scores' errors add up; 1% headroom covers the norms' own rounding.
    tolerance = 2.02 * _float32_dot_error(means.shape[-1]) * query_norm * norms
    tasks, positions = np.nonzero(~(best - second > tolerance))  # NaN scores: re-checked too
    if tasks.size:
        x = queries(tasks, positions).astype(np.float64)  # [C, D]
        m = means[tasks]  # [C, N, D]
        distances = -2.0 * np.einsum("cd,cnd->cn", x, m) + (m**2).sum(-1)
        predicted[tasks, positions] = distances.argmin(axis=-1)
    return predicted


def nearest_class_mean_accuracy(batch: EpisodeBatch) -> np.ndarray:
    """Per-task query accuracy [B] of the nearest-class-mean baseline.

    Each class's prototype is the mean of its K (unit-norm) support embeddings; a query
    takes the label of the nearest prototype in Euclidean distance.
    """
    b, n, q, d = batch.val_x.shape
    means = class_means(batch.tr_x)  # [B, N, D]
    queries = batch.val_x.reshape(b, n * q, d)
    products = queries @ means.astype(np.float32).transpose(0, 2, 1)  # [B, N*Q, N]
    query_norm = float(np.sqrt(np.einsum("bpd,bpd->bp", queries, queries).max()))
    predicted = nearest_class_mean_predictions(
        products, means, query_norm, lambda tasks, positions: queries[tasks, positions])
    return (predicted == batch.val_y.reshape(b, n * q)).mean(axis=1)
