"""NMF problem instances: synthetic low-rank-plus-noise matrices and real image data.

An instance is a frozen, named recipe for a non-negative matrix ``V``; building it is
deterministic in the instance's own seed, so an instance names the same matrix on every
machine. Train and test instances are disjoint: synthetic ones by seed, digits ones by the
images they use (even-indexed images for training, odd-indexed for testing).

Every matrix is scaled to unit root-mean-square entry, so learning rates and gradient noise
(``noise_std``) mean comparable things across instances.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SOURCES = ("synthetic", "digits")
SUITES = ("mixed", "synthetic", "digits")
SPLITS = ("train", "test", "all")
#: Pixels per scikit-learn digits image; the row count of every digits instance.
DIGITS_PIXELS = 64
#: Images available to each split (scikit-learn ships 1,797; each split takes every other one).
DIGITS_POOL = 898


@dataclass(frozen=True)
class NMFInstance:
    """A named recipe for a non-negative target matrix ``V``.

    ``true_rank`` and ``noise`` shape synthetic matrices (``V = W* H* + noise``);
    digits matrices hold ``shape[1]`` images as 64-pixel columns.
    """

    name: str
    source: str
    shape: tuple[int, int]
    seed: int
    true_rank: int = 0
    noise: float = 0.0
    split: str = "train"

    def matrix(self) -> np.ndarray:
        """The target matrix ``V`` (float64, non-negative, unit RMS); cached per instance."""
        return _matrix(self)


@functools.lru_cache(maxsize=64)
def _matrix(instance: NMFInstance) -> np.ndarray:
    rng = np.random.default_rng(instance.seed)
    m, n = instance.shape
    if instance.source == "synthetic":
        k = instance.true_rank
        W = rng.gamma(shape=0.5, scale=1.0, size=(m, k))
        H = rng.gamma(shape=0.5, scale=1.0, size=(k, n))
        V = W @ H
        V = V / np.sqrt(np.mean(V**2))
        V = np.abs(V + instance.noise * rng.standard_normal((m, n)))
    elif instance.source == "digits":
        images = _digits_images()
        pool = np.arange(instance.split == "test", len(images), 2)
        chosen = rng.choice(pool, size=n, replace=False)
        V = images[chosen].T.astype(np.float64)
    else:
        raise ValueError(f"source={instance.source!r} is invalid: expected one of {SOURCES}")
    V = V / np.sqrt(np.mean(V**2))
    V.setflags(write=False)
    return V


@functools.cache
def _digits_images() -> np.ndarray:
    from sklearn.datasets import load_digits  # ships with scikit-learn; no download

    return load_digits().data


def make_suite(
    shape: tuple[int, int], rank: int, suite: str = "mixed", seed: int = 0
) -> dict[str, list[NMFInstance]]:
    """The default train and test instances around a base ``shape`` and model ``rank``.

    Synthetic instances vary in size (the base shape and half of it), true rank (half, equal
    to and twice the model rank) and data noise (0.01, 0.1, 0.3 of the signal RMS); digits
    instances factorise 64-pixel images. Returns ``{"train": [...], "test": [...]}``.
    """
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is invalid: expected one of {SUITES}")
    m, n = shape
    sizes = [(m, n), (max(rank, m // 2), max(rank, n // 2))]
    ranks = sorted({max(1, rank // 2), rank, 2 * rank})
    noises = [0.01, 0.1, 0.3]
    out: dict[str, list[NMFInstance]] = {"train": [], "test": []}
    for split, count, offset in (("train", 9, 0), ("test", 6, 1000)):
        if suite in ("mixed", "synthetic"):
            for i in range(count):
                size = sizes[i % len(sizes)]
                k = min(ranks[i % len(ranks)], *size)
                noise = noises[(i // len(ranks)) % len(noises)]
                s = seed * 100_000 + offset + i
                out[split].append(
                    NMFInstance(
                        name=f"syn-{split}-{i}-{size[0]}x{size[1]}-k{k}-noise{noise}",
                        source="synthetic",
                        shape=size,
                        seed=s,
                        true_rank=k,
                        noise=noise,
                        split=split,
                    )
                )
        if suite in ("mixed", "digits"):
            n_digits = 3 if suite == "digits" else 1
            if split == "test":
                n_digits += 1
            for i in range(n_digits):
                cols = min(max(rank, n), DIGITS_POOL)
                out[split].append(
                    NMFInstance(
                        name=f"digits-{split}-{i}-{DIGITS_PIXELS}x{cols}",
                        source="digits",
                        shape=(DIGITS_PIXELS, cols),
                        seed=seed * 100_000 + offset + 500 + i,
                        split=split,
                    )
                )
    return out
