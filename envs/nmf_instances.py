"""NMF instances: named families of factorisation problems, split into train, tune and test.

An instance is everything an episode needs besides the env's global options (the clip, the
action mapping, the reward): the target matrix ``V`` (a frozen recipe, built deterministically
from the instance's own seed and data split) and the optimisation settings its family varies:
model rank, column minibatch size, gradient noise and episode length.

Families vary one aspect of the *base instance* (the env's ``shape``, ``rank``, ``batch_size``,
``noise_std`` and ``horizon``) at a time, so a result can be broken down by what makes a
problem hard:

============ ==================================================================================
family       what varies (everything else is the base instance)
============ ==================================================================================
base         seeds, true rank (r/2, r, 2r) and data noise (0.01, 0.1, 0.3)
size         size and aspect ratio: tall, wide and square matrices from 1/4 to 1.5x the base
rank         model rank against true rank: under- and over-parametrised factorisations
noisy_data   low signal-to-noise data (noise 0.5 to 1.5 times the signal RMS)
minibatch    column minibatch size (b/4 to 4b)
exact        full gradients (no minibatch), on half-size matrices
grad_noise   additive gradient noise, with minibatches and with full gradients (half size)
horizon      episode length (0.4x and 2x the base number of decisions)
scale        data scale: RMS entry from 0.01 to 100 instead of 1
digits       real data: scikit-learn's 8x8 digit images as 64-pixel columns
patches      real data: grey-level image patches (scikit-learn's and matplotlib's sample images)
text         real data: term counts of Python standard-library modules (a term x module matrix)
============ ==================================================================================

Splits are disjoint: synthetic instances by seed; real ones by the data they draw from (each
real source is cut into three disjoint pools, one per split: digit images by index, image
patches by image region, modules by a hash of their name). The agent trains on ``train``,
baselines are tuned on ``tune`` and everything is compared on ``test``.

Matrices are scaled to the family's RMS entry (1, except in the ``scale`` family), so learning
rates and gradient noise mean comparable things across instances. The ``text`` family reads the
running Python's standard library, so its matrices depend on the Python version.
"""

from __future__ import annotations

import functools
import gzip
import re
import sysconfig
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "tune", "test")
#: Per split, an offset that keeps synthetic seeds of different splits apart.
SPLIT_OFFSET = {"train": 0, "tune": 30_000, "test": 60_000}
REAL_SOURCES = ("digits", "patches", "text")


@dataclass(frozen=True)
class NMFInstance:
    """One NMF problem: a target-matrix recipe and its optimisation settings.

    ``batch_size=None`` means full gradients; ``noise_std`` is the standard deviation of the
    additive gradient noise per entry; ``horizon`` the number of decisions of an episode.
    Synthetic matrices are ``W* H*`` with ``true_rank`` gamma-distributed factors plus
    ``data_noise`` times Gaussian noise (in units of the signal RMS); ``scale`` is the RMS
    entry of the final matrix.
    """

    name: str
    family: str
    split: str
    source: str  # "synthetic" or one of REAL_SOURCES
    shape: tuple[int, int]
    seed: int
    rank: int
    batch_size: int | None
    noise_std: float
    horizon: int
    true_rank: int = 0
    data_noise: float = 0.0
    scale: float = 1.0
    patch: int = 0  # side of the square patches (``patches``)

    def matrix(self) -> np.ndarray:
        """The target matrix ``V`` (float64, non-negative, read-only); cached per instance."""
        return _matrix(self)


@dataclass(frozen=True)
class BaseInstance:
    """The env options that families vary around (the base instance)."""

    shape: tuple[int, int]
    rank: int
    batch_size: int | None
    noise_std: float
    horizon: int


#: A family draws instance ``i`` of a split: ``(base, i, rng) -> NMFInstance fields``.
Recipe = Callable[[BaseInstance, int, np.random.Generator], dict]


def _cycle(values: Sequence, i: int):
    return values[i % len(values)]


def _scaled(base: BaseInstance, fm: float, fn: float) -> tuple[int, int]:
    m, n = base.shape
    return max(base.rank + 2, round(fm * m)), max(base.rank + 2, round(fn * n))


def _base(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    r = base.rank
    return {
        "true_rank": _cycle([max(1, r // 2), r, 2 * r], i),
        "data_noise": _cycle([0.01, 0.1, 0.3], i // 3),
    }


def _size(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    # (rows, columns) relative to the base: tall, wide and square, small to large.
    factors = [(0.25, 0.25), (0.5, 1.0), (1.0, 0.4), (1.5, 0.5), (0.4, 1.5), (1.2, 1.2)]
    return {"shape": _scaled(base, *_cycle(factors, i)), "data_noise": 0.1}


def _rank(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    r = base.rank
    pairs = [(max(1, r // 3), r), (max(1, r // 2), 2 * r), (2 * r, r), (3 * r, max(1, r // 2))]
    model, true = _cycle(pairs, i)
    return {"rank": model, "true_rank": true, "data_noise": 0.1}


def _noisy_data(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    return {"data_noise": _cycle([0.5, 1.0, 1.5], i)}


def _minibatch(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    b = base.batch_size or 16
    return {"batch_size": _cycle([max(1, b // 4), max(1, b // 2), 2 * b, 4 * b], i)}


def _exact(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    # Full gradients cost n / b times a minibatch step: half-size matrices keep the family's
    # episodes as cheap as the others (and full-batch training is a small-problem regime).
    return {"batch_size": None, "shape": _scaled(base, 0.5, 0.5), "data_noise": 0.1}


def _grad_noise(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    exact = _cycle([True, False], i // 3)
    return {
        "noise_std": _cycle([0.01, 0.03, 0.1], i),
        "batch_size": None if exact else base.batch_size,
        "shape": _scaled(base, 0.5, 0.5) if exact else base.shape,
    }


def _horizon(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    return {"horizon": _cycle([max(1, (2 * base.horizon) // 5), 2 * base.horizon], i)}


def _scale(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    return {"scale": _cycle([0.01, 0.1, 10.0, 100.0], i)}


def _digits(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    r = base.rank
    return {
        "shape": (64, _cycle([100, 150, 300], i)),
        "rank": _cycle([max(1, r // 2), r, (3 * r) // 2], i // 3),
    }


def _patches(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    side = _cycle([6, 8, 10], i)
    r = base.rank
    return {
        "shape": (side * side, _cycle([120, 200], i // 3)),
        "patch": side,
        "rank": min(side * side - 1, _cycle([max(1, r // 2), r], i // 6)),
    }


def _text(base: BaseInstance, i: int, rng: np.random.Generator) -> dict:
    r = base.rank
    return {
        "shape": (_cycle([100, 200], i), _cycle([80, 150], i // 2)),
        "rank": _cycle([max(1, r // 2), r], i // 4),
    }


@dataclass(frozen=True)
class Family:
    """A named family of instances: its source and how instance ``i`` of a split is drawn."""

    name: str
    source: str
    recipe: Recipe
    description: str


FAMILY_LIST = (
    Family("base", "synthetic", _base, "the base instance; true rank and data noise vary"),
    Family("size", "synthetic", _size, "tall, wide, small and large matrices"),
    Family("rank", "synthetic", _rank, "model rank below and above the true rank"),
    Family("noisy_data", "synthetic", _noisy_data, "low signal-to-noise data"),
    Family("minibatch", "synthetic", _minibatch, "column minibatches from b/4 to 4b"),
    Family("exact", "synthetic", _exact, "full gradients"),
    Family("grad_noise", "synthetic", _grad_noise, "additive gradient noise"),
    Family("horizon", "synthetic", _horizon, "short and long episodes"),
    Family("scale", "synthetic", _scale, "data RMS from 0.01 to 100"),
    Family("digits", "digits", _digits, "scikit-learn digit images"),
    Family("patches", "patches", _patches, "grey-level image patches"),
    Family("text", "text", _text, "term counts of standard-library modules"),
)
FAMILIES = {f.name: f for f in FAMILY_LIST}


def make_suite(
    base: BaseInstance,
    families: Sequence[str],
    counts: dict[str, int],
    seed: int = 0,
) -> dict[str, list[NMFInstance]]:
    """The instances of each split: ``counts[split]`` per family, in a fixed order.

    Instance ``i`` of a family and split is a deterministic function of ``(base, family, split,
    i, seed)``; the synthetic seeds of different splits, families and suite seeds never meet.
    """
    out: dict[str, list[NMFInstance]] = {}
    for split in SPLITS:
        out[split] = [
            _instance(base, FAMILIES[name], split, i, seed)
            for name in families
            for i in range(counts[split])
        ]
    return out


def _instance(base: BaseInstance, family: Family, split: str, i: int, seed: int) -> NMFInstance:
    index = FAMILY_LIST.index(family)
    own_seed = seed * 10_000_000 + index * 100_000 + SPLIT_OFFSET[split] + i
    rng = np.random.default_rng(own_seed)
    fields = {
        "shape": base.shape,
        "rank": base.rank,
        "batch_size": base.batch_size,
        "noise_std": base.noise_std,
        "horizon": base.horizon,
        "true_rank": base.rank,
        "data_noise": 0.1,
        **family.recipe(base, i, rng),
    }
    m, n = fields["shape"]
    rank = min(fields["rank"], m, n)
    batch = fields["batch_size"]
    if batch is not None and batch >= n:
        batch = None  # a minibatch of every column is the full gradient
    instance = NMFInstance(
        name="",
        family=family.name,
        split=split,
        source=family.source,
        shape=(int(m), int(n)),
        seed=own_seed,
        rank=int(rank),
        batch_size=batch,
        noise_std=float(fields["noise_std"]),
        horizon=int(fields["horizon"]),
        true_rank=int(min(fields["true_rank"], m, n)),
        data_noise=float(fields["data_noise"]),
        scale=float(fields.get("scale", 1.0)),
        patch=int(fields.get("patch", 0)),
    )
    return replace(instance, name=instance_name(instance, i))


def instance_name(p: NMFInstance, i: int) -> str:
    """A readable unique name: family, split, index and what sets the instance apart."""
    parts = [p.family, p.split, str(i), f"{p.shape[0]}x{p.shape[1]}", f"r{p.rank}"]
    if p.source == "synthetic":
        parts += [f"k{p.true_rank}", f"dn{p.data_noise:g}"]
    parts.append("exact" if p.batch_size is None else f"b{p.batch_size}")
    if p.noise_std > 0:
        parts.append(f"gn{p.noise_std:g}")
    if p.scale != 1.0:
        parts.append(f"s{p.scale:g}")
    parts.append(f"T{p.horizon}")
    return "-".join(parts)


# -- the matrices ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _matrix(p: NMFInstance) -> np.ndarray:
    rng = np.random.default_rng(p.seed)
    m, n = p.shape
    if p.source == "synthetic":
        W = rng.gamma(shape=0.5, scale=1.0, size=(m, p.true_rank))
        H = rng.gamma(shape=0.5, scale=1.0, size=(p.true_rank, n))
        V = W @ H
        V = V / np.sqrt(np.mean(V**2))
        V = np.abs(V + p.data_noise * rng.standard_normal((m, n)))
    elif p.source == "digits":
        pool = _digits_images()[_pool(len(_digits_images()), p.split)]
        V = pool[rng.choice(len(pool), size=n, replace=False)].T.astype(np.float64)
    elif p.source == "patches":
        V = _patch_matrix(p.patch, n, p.split, rng)
    elif p.source == "text":
        V = _text_matrix(m, n, p.split, rng)
    else:
        raise ValueError(f"source={p.source!r} is invalid: expected 'synthetic' or {REAL_SOURCES}")
    if V.shape != p.shape:
        raise ValueError(f"instance {p.name}: built a {V.shape} matrix, expected {p.shape}")
    rms = np.sqrt(np.mean(V**2))
    V = V * (p.scale / rms) if rms > 0 else V
    V.setflags(write=False)
    return V


def _pool(size: int, split: str) -> np.ndarray:
    """Indices of one split's third of ``size`` items (interleaved: 0, 3, 6, ... for train)."""
    return np.arange(SPLITS.index(split), size, len(SPLITS))


def _sklearn_data(*parts: str) -> Path:
    """A data file shipped inside scikit-learn, found without importing it (seconds)."""
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ValueError("the image and digits families need scikit-learn, which is not installed")
    return Path(spec.origin).parent.joinpath("datasets", *parts)


@functools.cache
def _digits_images() -> np.ndarray:
    """scikit-learn's 1,797 digit images, 64 pixels each (``load_digits().data``)."""
    return np.loadtxt(_sklearn_data("data", "digits.csv.gz"), delimiter=",")[:, :-1]


@functools.cache
def _grey_images() -> tuple[np.ndarray, ...]:
    """Grey-level sample images that ship with scikit-learn and matplotlib (no download)."""
    import matplotlib.cbook as cbook
    from PIL import Image  # a matplotlib dependency

    def grey(path: Any) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float64) / 255.0

    images = [grey(_sklearn_data("images", name)) for name in ("china.jpg", "flower.jpg")]
    images.append(grey(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    # a 256 x 256 MRI slice, 16-bit
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as f:
        mri = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float64)
    images.append(mri / mri.max())
    return tuple(images)


def _patch_matrix(side: int, n: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``side x side`` patches as columns, from one split's third of each image.

    Each image is cut into three vertical bands, one per split, so no pixel is shared.
    """
    columns = []
    images = _grey_images()
    which = rng.integers(len(images), size=n)
    k = SPLITS.index(split)
    for i in which:
        img = images[i]
        h, w = img.shape
        lo, hi = k * w // 3, (k + 1) * w // 3 - side
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(lo, hi + 1))
        columns.append(img[y : y + side, x : x + side].ravel())
    return np.stack(columns, axis=1) + 1e-3  # strictly positive: no all-zero columns


@functools.cache
def _stdlib_counts(split: str) -> tuple[tuple[Counter, ...], tuple[str, ...]]:
    """Term counts of the standard-library modules of one split (by a hash of the name)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) + sorted(
        p for p in root.glob("*/*.py") if "test" not in p.parent.name and p.parent.name != "idlelib"
    )
    k = SPLITS.index(split)
    token = re.compile(r"[A-Za-z][A-Za-z_]{2,}")
    counts, names = [], []
    for path in files:
        name = str(path.relative_to(root))
        if zlib.crc32(name.encode()) % len(SPLITS) != k:
            continue
        # The first 8,000 characters (docstring, imports, first definitions) keep this fast.
        text = path.read_text(encoding="utf-8", errors="replace")[:8000].lower()
        counts.append(Counter(token.findall(text)))
        names.append(name)
    return tuple(counts), tuple(names)


def _text_matrix(m: int, n: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """``log(1 + count)`` of the ``m`` most widespread terms in ``n`` random modules."""
    counts, _ = _stdlib_counts(split)
    chosen = [counts[i] for i in rng.choice(len(counts), size=min(n, len(counts)), replace=False)]
    spread: Counter = Counter()
    for c in chosen:
        spread.update(c.keys())
    terms = [t for t, _ in sorted(spread.items(), key=lambda kv: (-kv[1], kv[0]))[:m]]
    V = np.array([[c.get(t, 0) for c in chosen] for t in terms], dtype=np.float64)
    return np.log1p(V) + 1e-3
