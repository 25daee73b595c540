"""A real-image few-shot benchmark built offline: Omniglot-like glyphs -> CNN -> LEO pickles.

    python -m leo_core.glyphs --out DIR [--seed 0] [--images-per-class 50] [--epochs 3]

1. **Glyphs.** Characters are rendered from the fonts matplotlib ships (12 DejaVu faces:
   Sans, Serif, Sans Mono x regular/bold/oblique/bold-oblique, and 4 STIX General faces),
   each at the size that fits its bounding box in a 48x48 canvas. A *class* is one
   character (a Unicode code point of a letter or symbol category that at least
   `MIN_FONTS` of the faces draw); an *image* of it is one face's drawing (the faces play
   Omniglot's drawers) under a random affine map (rotation, scale, shear, shift), a random
   sampled onto 32x32, a random stroke width (erosion / dilation), blur, contrast and
   pixel noise.
2. **Splits by script**, as Omniglot's background / evaluation alphabets: the training
   classes come from Latin, Cyrillic, Canadian syllabics, Arabic, mathematical letters,
   APL, box drawing, arrows, Tai Xuan Jing tetragrams, hexagrams and modifier letters; the
   validation classes from Greek, Coptic and Braille; the test classes from Georgian,
   Armenian, Hebrew, Lisu and Lao (no test script occurs in training). Large scripts are
   capped (`SCRIPTS`) so that no script dominates.
3. **Feature extractor.** A 4-block CNN (3x3 conv, batch norm, ReLU, 2x2 max pool;
   16/32/64/160 channels; 32 -> 2 pixels, so the penultimate layer is 160x2x2 = 640
   non-negative features, as WRN-28-10's 640) is trained to classify the TRAINING classes
   only, on freshly augmented images each epoch. It never sees a validation or test class.
4. **Pickles.** Its 640-d penultimate features of every split are written in the original
   LEO format and layout: ``DIR/glyphs/center/<train|val|test>_embeddings.pkl`` (dict of
   ``keys`` ``<row>-u<code>-u<code>_<8 digits>.png``, float32 ``embeddings`` (n, 640),
   int64 ``labels``), plus ``DIR/glyphs/build.json`` (scripts, classes, timings, the
   CNN's accuracy). Experiments ``glyphs_5shot`` and ``glyphs_1shot`` read them.

Why PyTorch: on this project's 2-core CPU the same CNN (batch 128, 32x32 grey) trains at
~21 images/s in MindSpore 2.10 (graph mode, with or without batch norm) and ~983 images/s
in PyTorch 2.13, so the extractor is trained with PyTorch (the optional extra
``.[glyphs]``); LEO itself still trains in MindSpore on these pickles. Everything is
seeded (NumPy for the glyph draws, ``torch.manual_seed`` for the network); one progress
line per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leo_core.cli_common import write_files

DATASET = "glyphs"
CANVAS = 48  # rendering resolution (pixels)
SIZE = 32  # image size fed to the CNN
GLYPH_BOX = 30  # a glyph's longer side on the canvas before augmentation
MIN_FONTS = 3
FEATURE_DIM = 640
CHANNELS = (16, 32, 64, 160)  # 160 x 2 x 2 = 640 penultimate features

# Faces of matplotlib's mpl-data/fonts/ttf used as "drawers".
FONT_FILES = tuple(
    [f"DejaVuSans{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")]
    + [f"DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")]
    + [f"DejaVuSansMono{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")]
    + [f"STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")]
)

# split -> {script: the Unicode names' first word(s), max classes}
SCRIPTS: dict[str, dict[str, tuple[tuple[str, ...], int]]] = {
    "train": {
        "latin": (("LATIN",), 120),
        "cyrillic": (("CYRILLIC",), 80),
        "canadian": (("CANADIAN",), 80),
        "arabic": (("ARABIC",), 50),
        "mathematical": (("MATHEMATICAL",), 40),
        "apl": (("APL",), 30),
        "box": (("BOX",), 30),
        "arrows": (("RIGHTWARDS", "LEFTWARDS", "UPWARDS", "DOWNWARDS"), 40),
        "tetragram": (("TETRAGRAM",), 30),
        "hexagram": (("HEXAGRAM",), 30),
        "modifier": (("MODIFIER",), 40),
    },
    "val": {
        "greek": (("GREEK",), 120),
        "coptic": (("COPTIC",), 40),
        "braille": (("BRAILLE",), 60),
    },
    "test": {
        "georgian": (("GEORGIAN",), 200),
        "armenian": (("ARMENIAN",), 200),
        "hebrew": (("HEBREW",), 200),
        "lisu": (("LISU",), 200),
        "lao": (("LAO",), 200),
    },
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Augment:
    """Ranges of the random image transformations (see the module docstring)."""

    rotation_deg: float = 12.0  # std
    scale: tuple[float, float] = (0.75, 1.1)
    shear: float = 0.18  # std
    shift_px: float = 2.5  # std, canvas pixels
    blur_sigma: tuple[float, float] = (0.0, 1.6)  # canvas pixels
    noise: tuple[float, float] = (0.02, 0.15)  # std of pixel noise, uniform range
    contrast: tuple[float, float] = (0.6, 1.0)


def _say(message: str) -> None:
    print(message, flush=True)


def _torch():
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "error: the glyph benchmark trains its feature extractor with PyTorch; "
            "install it with `pip install -e '.[glyphs]'`"
        ) from None
    return torch


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


# ---------------------------------------------------------------- characters and scripts


def _script_of(code: int) -> str | None:
    char = chr(code)
    if unicodedata.category(char)[0] not in "LS":  # letters and symbols only
        return None
    try:
        name = unicodedata.name(char)
    except ValueError:
        return None
    first = name.split()[0]
    for split in SPLITS:
        for script, (prefixes, _) in SCRIPTS[split].items():
            if first in prefixes:
                return script
    return None


def choose_classes(seed: int) -> dict[str, list[tuple[int, str, tuple[int, ...]]]]:
    """split -> [(code point, script, indices of the faces that draw it)], seeded."""
    from matplotlib import ft2font

    faces = [ft2font.FT2Font(str(font_dir() / name)) for name in FONT_FILES]
    cover: dict[int, list[int]] = {}
    for index, face in enumerate(faces):
        for code in face.get_charmap():
            cover.setdefault(code, []).append(index)
    by_script: dict[str, list[int]] = {}
    for code in sorted(cover):
        if len(cover[code]) >= MIN_FONTS:
            script = _script_of(code)
            if script is not None:
                by_script.setdefault(script, []).append(code)
    rng = np.random.default_rng([seed, 1])
    out: dict[str, list[tuple[int, str, tuple[int, ...]]]] = {}
    for split in SPLITS:
        chosen = []
        for script, (_, cap) in SCRIPTS[split].items():
            codes = by_script.get(script, [])
            if len(codes) > cap:
                codes = sorted(rng.choice(codes, cap, replace=False).tolist())
            chosen.extend((code, script, tuple(cover[code])) for code in codes)
        out[split] = chosen
    return out


# ---------------------------------------------------------------- rendering


def render_bases(classes: Sequence[tuple[int, str, tuple[int, ...]]]) -> tuple[np.ndarray, list[list[int]]]:
    """Every (class, face) drawing centred on a CANVAS x CANVAS float32 canvas in [0, 1].

    Returns the drawings [M, CANVAS, CANVAS] and, per class, the indices of its drawings
    (faces whose drawing is empty are dropped).
    """
    from matplotlib import ft2font

    faces = [ft2font.FT2Font(str(font_dir() / name)) for name in FONT_FILES]
    images: list[np.ndarray] = []
    owners: list[list[int]] = []
    for code, _, face_ids in classes:
        mine = []
        for face_id in face_ids:
            glyph = _render(faces[face_id], chr(code))
            if glyph is not None:
                mine.append(len(images))
                images.append(glyph)
        owners.append(mine)
    return np.stack(images), owners


def _render(face, char: str) -> np.ndarray | None:
    face.clear()
    face.set_size(64, 72)
    face.set_text(char, 0.0)
    face.draw_glyphs_to_bitmap(antialiased=True)
    bitmap = np.asarray(face.get_image(), dtype=np.float32) / 255.0
    ys, xs = np.nonzero(bitmap > 0.1)
    if len(ys) < 8:
        return None
    bitmap = bitmap[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = bitmap.shape
    factor = GLYPH_BOX / max(h, w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    small = _resize(bitmap, nh, nw)
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    top, left = (CANVAS - nh) // 2, (CANVAS - nw) // 2
    canvas[top : top + nh, left : left + nw] = small
    return canvas


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaging resize (the image is only ever shrunk or kept)."""
    torch = _torch()
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(height, width), mode="area")[0, 0].numpy()


def augment(bases, index: np.ndarray, rng: np.random.Generator, params: Augment = Augment()):
    """Random images [B, 1, SIZE, SIZE] (torch float32) from the drawings `bases[index]`."""
    torch = _torch()
    functional = torch.nn.functional
    b = len(index)
    x = bases[torch.from_numpy(index)][:, None]  # [B, 1, C, C]
    angle = np.deg2rad(params.rotation_deg * rng.standard_normal(b))
    scale = rng.uniform(*params.scale, b)
    shear = params.shear * rng.standard_normal(b)
    shift = params.shift_px * rng.standard_normal((b, 2)) * 2.0 / CANVAS
    cos, sin = np.cos(angle), np.sin(angle)
    # Output -> input sampling grid: inverse of (rotate . shear . scale).
    theta = np.zeros((b, 2, 3), np.float32)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (-sin + shear * cos) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = (cos + shear * sin) / scale
    theta[:, :, 2] = shift
    # Sampled straight onto the SIZE x SIZE output (all later steps work at SIZE).
    grid = functional.affine_grid(torch.from_numpy(theta), [b, 1, SIZE, SIZE], align_corners=False)
    x = functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    # Stroke width: a third eroded, a third dilated (3x3 grey morphology).
    stroke = rng.integers(0, 3, b)
    dilated = functional.max_pool2d(x, 3, 1, 1)
    eroded = -functional.max_pool2d(-x, 3, 1, 1)
    pick = torch.from_numpy(stroke)[:, None, None, None]
    x = torch.where(pick == 1, dilated, torch.where(pick == 2, eroded, x))
    # Gaussian blur with a per-image sigma (separable, grouped convolution).
    sigma = rng.uniform(*params.blur_sigma, b) * SIZE / CANVAS
    radius = 2
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets[None] ** 2) / (2 * np.maximum(sigma[:, None], 1e-3) ** 2))
    kernel = torch.from_numpy((kernel / kernel.sum(1, keepdims=True)).astype(np.float32))
    x = x.reshape(1, b, SIZE, SIZE)
    x = functional.conv2d(functional.pad(x, (radius, radius, 0, 0)), kernel[:, None, None, :], groups=b)
    x = functional.conv2d(functional.pad(x, (0, 0, radius, radius)), kernel[:, None, :, None], groups=b)
    x = x.reshape(b, 1, SIZE, SIZE)
    contrast = torch.from_numpy(rng.uniform(*params.contrast, b).astype(np.float32))[:, None, None, None]
    noise = torch.from_numpy(rng.uniform(*params.noise, b).astype(np.float32))[:, None, None, None]
    pixels = torch.from_numpy(rng.standard_normal((b, 1, SIZE, SIZE), dtype=np.float32))
    return (x * contrast + noise * pixels).clamp(0.0, 1.0)


# ---------------------------------------------------------------- the feature extractor


def make_network(num_classes: int):
    torch = _torch()
    nn = torch.nn
    layers = []
    channels = 1
    for width in CHANNELS:
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width
    features = nn.Sequential(*layers, nn.Flatten())
    return nn.Sequential(features, nn.Dropout(0.2), nn.Linear(FEATURE_DIM, num_classes))


def _normalise(x):
    return (x - 0.5) / 0.5


def train_network(bases, owners: list[list[int]], *, epochs: int, images_per_epoch: int,
                  batch_size: int, seed: int, progress=_say):
    """Train the CNN to classify the training classes on fresh augmentations; return it
    and its accuracy on the last epoch's batches."""
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    net = make_network(len(owners))
    steps_per_epoch = max(1, images_per_epoch // batch_size)
    total = epochs * steps_per_epoch
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=total,
                                                   pct_start=0.1)
    lookup = [np.asarray(o, np.int64) for o in owners]
    net.train()
    started = time.monotonic()
    for epoch in range(epochs):
        correct = seen = 0
        loss_sum = 0.0
        for _ in range(steps_per_epoch):
            labels = rng.integers(0, len(owners), batch_size)
            index = np.array([lookup[c][rng.integers(len(lookup[c]))] for c in labels])
            images = _normalise(augment(bases, index, rng))
            target = torch.from_numpy(labels)
            logits = net(images)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_sum += float(loss.detach()) * batch_size
            correct += int((logits.argmax(1) == target).sum())
            seen += batch_size
        rate = (epoch + 1) * steps_per_epoch * batch_size / (time.monotonic() - started)
        progress(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.3f}, "
                 f"train accuracy {correct / seen:.3f}, {rate:.0f} images/s")
    return net, correct / seen


def extract_features(net, images, batch_size: int = 512) -> np.ndarray:
    torch = _torch()
    features = net[0]
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(features(_normalise(images[start : start + batch_size])).numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------- the build


def _write_pickle(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            pickle.dump(data, handle, protocol=4)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build(out: str | Path, *, seed: int = 0, images_per_class: int = 50, epochs: int = 3,
          images_per_epoch: int = 16_000, batch_size: int = 128, threads: int | None = None,
          progress=_say) -> Path:
    """Render, train, extract, write; return ``out/glyphs``."""
    torch = _torch()
    if threads:
        torch.set_num_threads(threads)
    if images_per_class < 2:
        raise ValueError("images_per_class must be at least 2")
    started = time.monotonic()
    root = Path(out) / DATASET
    stage = time.monotonic()
    classes = choose_classes(seed)
    counts = {s: len(c) for s, c in classes.items()}
    progress(f"[1/5] characters: {counts['train']} train / {counts['val']} val / "
             f"{counts['test']} test classes from {len(FONT_FILES)} faces "
             f"({time.monotonic() - stage:.1f} s)")

    stage = time.monotonic()
    bases, owners = {}, {}
    for split in SPLITS:
        drawings, split_owners = render_bases(classes[split])
        keep = [i for i, o in enumerate(split_owners) if len(o) >= MIN_FONTS]
        classes[split] = [classes[split][i] for i in keep]
        owners[split] = [split_owners[i] for i in keep]
        bases[split] = torch.from_numpy(drawings)
    progress(f"[2/5] rendered {sum(len(b) for b in bases.values())} drawings "
             f"(class x face, {CANVAS}x{CANVAS}) ({time.monotonic() - stage:.1f} s)")

    stage = time.monotonic()
    images = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, 2, index])
        chosen = np.concatenate([rng.choice(o, images_per_class) for o in owners[split]])
        parts = [augment(bases[split], chosen[a : a + 4096], rng)
                 for a in range(0, len(chosen), 4096)]
        images[split] = torch.cat(parts)
    progress(f"[3/5] drew {images_per_class} augmented {SIZE}x{SIZE} images per class: "
             + ", ".join(f"{s} {len(images[s])}" for s in SPLITS)
             + f" ({time.monotonic() - stage:.1f} s)")

    stage = time.monotonic()
    progress(f"[4/5] training the CNN feature extractor on the {len(owners['train'])} training "
             f"classes only ({epochs} epochs x {images_per_epoch} fresh images, PyTorch, "
             f"{torch.get_num_threads()} threads)")
    net, train_accuracy = train_network(bases["train"], owners["train"], epochs=epochs,
                                        images_per_epoch=images_per_epoch, batch_size=batch_size,
                                        seed=seed, progress=progress)
    train_seconds = time.monotonic() - stage
    progress(f"[4/5] trained ({train_seconds:.0f} s)")

    stage = time.monotonic()
    summary = {"seed": seed, "images_per_class": images_per_class, "epochs": epochs,
               "images_per_epoch": images_per_epoch, "cnn_train_accuracy": round(train_accuracy, 4),
               "fonts": list(FONT_FILES), "splits": {}}
    for split in SPLITS:
        features = extract_features(net, images[split])
        names = [f"u{code:05X}" for code, _, _ in classes[split]]
        order = np.argsort(names)
        keys, rows = [], []
        for c in order:
            for j in range(images_per_class):
                keys.append(f"{len(keys)}-{names[c]}-{names[c]}_{j:08d}.png")
                rows.append(c * images_per_class + j)
        embeddings = np.ascontiguousarray(features[np.asarray(rows)])
        labels = np.repeat(np.arange(len(order), dtype=np.int64), images_per_class)
        _write_pickle(root / "center" / f"{split}_embeddings.pkl",
                      {"keys": np.array(keys), "embeddings": embeddings, "labels": labels})
        scripts: dict[str, int] = {}
        for _, script, _ in classes[split]:
            scripts[script] = scripts.get(script, 0) + 1
        summary["splits"][split] = {"classes": len(order), "images": len(keys), "scripts": scripts,
                                    "zero_fraction": round(float(np.mean(embeddings == 0)), 3)}
    progress(f"[5/5] wrote 640-d features of every split to {root / 'center'} "
             f"({time.monotonic() - stage:.1f} s)")
    summary["seconds"] = round(time.monotonic() - started, 1)
    (root / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    progress(f"done in {summary['seconds'] / 60:.1f} min: {root}")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leo_core.glyphs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path,
                        help="data root: writes OUT/glyphs/center/<split>_embeddings.pkl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-epoch", type=int, default=16_000)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: its own)")
    args = parser.parse_args(argv)
    if args.seed < 0 or args.epochs < 1 or args.images_per_epoch < 1:
        print("error: --seed must be >= 0, --epochs and --images-per-epoch >= 1", file=sys.stderr)
        return 2
    return write_files(args.out, lambda: build(
        args.out, seed=args.seed, images_per_class=args.images_per_class, epochs=args.epochs,
        images_per_epoch=args.images_per_epoch, threads=args.threads))


if __name__ == "__main__":
    sys.exit(main())
