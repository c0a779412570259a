"""The NMF instance suite: size, stratification, reproducibility and disjoint splits."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from lrrl.envs import nmf_instances
from lrrl.envs.nmf import NMFConfig
from lrrl.envs.nmf_instances import FAMILIES, SPLITS, BaseInstance, make_suite

BASE = BaseInstance(shape=(60, 50), rank=6, batch_size=8, noise_std=0.0, horizon=10)


def test_default_suite_is_large_and_stratified_by_family():
    suite = NMFConfig().suite
    assert len(suite["test"]) >= 256 and len(suite["tune"]) >= 64
    for split in SPLITS:
        per_family = collections.Counter(inst.family for inst in suite[split])
        assert set(per_family) == set(FAMILIES)
        assert len(set(per_family.values())) == 1  # every family equally represented
    names = [inst.name for inst in suite["all"]]
    assert len(names) == len(set(names))


def test_families_vary_what_they_say_and_keep_the_rest_at_the_base():
    suite = make_suite(BASE, tuple(FAMILIES), {"train": 12, "tune": 0, "test": 0})["train"]
    by = collections.defaultdict(list)
    for inst in suite:
        by[inst.family].append(inst)

    def values(family, key):
        return {getattr(i, key) for i in by[family]}

    assert values("size", "shape") >= {(15, 12), (90, 25)} and len(values("size", "shape")) >= 5
    assert len(values("rank", "rank")) >= 3 and values("base", "rank") == {6}
    assert None in values("exact", "batch_size") and values("exact", "batch_size") == {None}
    assert len(values("minibatch", "batch_size")) == 4
    assert values("grad_noise", "noise_std") >= {0.01, 0.1} and values("base", "noise_std") == {0.0}
    assert values("horizon", "horizon") == {4, 20}
    assert values("scale", "scale") == {0.01, 0.1, 10.0, 100.0}
    for inst in by["scale"]:
        rms = math.sqrt(float(np.mean(inst.matrix() ** 2)))
        assert rms == pytest.approx(inst.scale, rel=1e-9)
    for family in ("digits", "patches", "text"):
        for inst in by[family][:4]:
            V = inst.matrix()
            assert V.shape == inst.shape and (V >= 0).all()
            assert math.sqrt(float(np.mean(V**2))) == pytest.approx(1.0, rel=1e-9)
    for inst in suite:
        assert inst.rank <= min(inst.shape)
        assert inst.batch_size is None or inst.batch_size < inst.shape[1]


def test_the_suite_is_reproducible_and_the_seed_changes_it():
    counts = {"train": 2, "tune": 1, "test": 2}
    a = make_suite(BASE, ("base", "digits", "text"), counts, seed=0)
    b = make_suite(BASE, ("base", "digits", "text"), counts, seed=0)
    c = make_suite(BASE, ("base", "digits", "text"), counts, seed=1)
    for split in SPLITS:
        for x, y in zip(a[split], b[split], strict=True):
            assert x == y
            np.testing.assert_array_equal(x.matrix(), y.matrix())
    assert not np.allclose(a["test"][0].matrix(), c["test"][0].matrix())


def test_synthetic_splits_never_share_a_seed():
    suite = NMFConfig().suite
    seeds = {split: {i.seed for i in suite[split] if i.source == "synthetic"} for split in SPLITS}
    assert not seeds["train"] & seeds["test"]
    assert not seeds["tune"] & seeds["test"]
    assert not seeds["train"] & seeds["tune"]


def test_digit_splits_use_disjoint_images(monkeypatch):
    # Fake image i: pixel 0 is 1 and pixel 1 is i + 1, so a column's ratio names its image.
    images = np.zeros((1797, 64))
    images[:, 0] = 1.0
    images[:, 1] = np.arange(1797) + 1.0
    monkeypatch.setattr(nmf_instances, "_digits_images", lambda: images)
    nmf_instances._matrix.cache_clear()
    try:
        suite = make_suite(BASE, ("digits",), {"train": 3, "tune": 3, "test": 3})
        used = {}
        for split in SPLITS:
            ids: set[int] = set()
            for inst in suite[split]:
                V = inst.matrix()
                ids |= {round(float(i)) - 1 for i in V[1] / V[0]}
            used[split] = ids
            assert ids <= set(nmf_instances._pool(1797, split).tolist())
        assert not used["train"] & used["test"] and not used["tune"] & used["test"]
        assert not used["train"] & used["tune"]
    finally:
        nmf_instances._matrix.cache_clear()


def test_patch_splits_come_from_disjoint_image_bands(monkeypatch):
    # A fake image whose pixel value is its column index: a patch reveals where it was cut.
    image = np.tile(np.arange(300, dtype=np.float64) + 1.0, (120, 1))
    monkeypatch.setattr(nmf_instances, "_grey_images", lambda: (image,))
    rng = np.random.default_rng(0)
    bands = {}
    for split in SPLITS:
        V = np.round(nmf_instances._patch_matrix(6, 200, split, rng) - 1e-3)
        bands[split] = (V.min() - 1, V.max() - 1)  # the columns used, 0-based
    k = {split: SPLITS.index(split) for split in SPLITS}
    for split, (lo, hi) in bands.items():
        assert lo >= k[split] * 100 and hi < (k[split] + 1) * 100, (split, lo, hi)


def test_text_splits_use_disjoint_modules():
    names = {split: set(nmf_instances._stdlib_counts(split)[1]) for split in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not names[a] & names[b]
    assert all(len(v) >= 150 for v in names.values())
