"""The small training problems of the noisy-training comparison and their noise conditions.

A *problem* is a model family crossed with one noise condition. Every family trains on data
that ships with an installed package or is generated (nothing is downloaded):

========= =============================================== ==========================
family    model and data                                  optimizer
========= =============================================== ==========================
mlp       two hidden layers of 64 on scikit-learn digits  SGD, momentum 0.9
cnn       two small convolutions on digits (8x8 images)   SGD, momentum 0.9
softmax   a linear softmax classifier on digits           SGD, momentum 0.9
gru       a GRU on generated token sequences (majority)   Adam
nmf       projected SGD on a synthetic low-rank matrix    SGD
========= =============================================== ==========================

Noise conditions, the same idea for every family (strengths in :class:`NoiseStrengths`):

* ``none``: minibatch sampling is the only noise.
* ``gradient``: additive Gaussian noise on every gradient; each tensor's standard deviation is
  ``gradient_std`` times the RMS of its first minibatch gradient, so it means the same thing
  for every family and does not shrink as training converges.
* ``label``: a fraction of the training targets is corrupted (classifiers: a label replaced by
  another class; NMF: an entry of ``V`` replaced by an entry drawn from elsewhere in ``V``).
* ``spike``: at a known step every parameter tensor is perturbed by Gaussian noise of
  ``spike_scale`` times its RMS (the loss jumps; recovery is measured from there).
* ``shift``: at a known step the data changes (classifiers: every label ``y`` becomes
  ``(y + 1) mod classes``; NMF: the target becomes another matrix of the same kind).

The reported loss is the full-batch training loss on the data as the run sees it (corrupted
targets included, after a shift the new data); the loss on the clean targets is kept as well.
The imports from ``lrrl.envs`` are gathered here, the study's one point of contact with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from lrrl.envs.dnn_models import build_model, build_optimizer
from lrrl.envs.dnn_tasks import SEQ_VOCAB, TaskData, _generated, _images
from lrrl.envs.nmf_instances import NMFInstance
from lrrl.envs.nmf_ops import loss_from_residual, residual

NOISES = ("none", "gradient", "label", "spike", "shift")
#: Independent random streams of one run, each seeded from the run seed and its position here.
STREAMS = ("init", "targets", "batches", "gradient", "spike")


@dataclass(frozen=True)
class Family:
    """A model family: what trains, with which optimizer, and where its learning rates live.

    ``lr_range`` is the search range of the starting/peak learning rate given to every
    scheduler's tuner: about two and a half decades around the family's best constant rate
    (found with a constant-rate sweep, noise-free, 300 steps).
    """

    name: str
    optimizer: str  # "momentum" (SGD, 0.9), "sgd" or "adam"
    lr_range: tuple[float, float]
    batch_size: int


FAMILIES: dict[str, Family] = {
    "mlp": Family("mlp", "momentum", (3e-3, 1.0), 32),
    "cnn": Family("cnn", "momentum", (1e-2, 3.0), 32),
    "softmax": Family("softmax", "momentum", (3e-2, 10.0), 32),
    "gru": Family("gru", "adam", (3e-4, 0.1), 32),
    # the mean-square loss has small gradients: its stable rates are large
    "nmf": Family("nmf", "sgd", (1.0, 300.0), 32),
}

#: NMF problem: a synthetic ``M x N`` low-rank-plus-noise matrix, factorised at its true rank.
NMF_SHAPE, NMF_RANK, NMF_DATA_NOISE = (64, 128), 8, 0.1


@dataclass(frozen=True)
class NoiseStrengths:
    """How strong each noise condition is (one set for every family)."""

    gradient_std: float = 1.0
    label_fraction: float = 0.2
    spike_scale: float = 1.0
    event_at: float = 0.5  # fraction of the run at which the spike or the shift happens

    def __post_init__(self) -> None:
        for name in ("gradient_std", "spike_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected > 0")
        if not 0 < self.label_fraction < 1:
            raise ValueError(
                f"label_fraction={self.label_fraction!r} is invalid: expected in (0, 1)"
            )
        if not 0 < self.event_at < 1:
            raise ValueError(f"event_at={self.event_at!r} is invalid: expected in (0, 1)")


def check_problem(family: str, noise: str) -> None:
    """Raise a one-line ``ValueError`` for an unknown family or noise condition."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is invalid: expected one of {tuple(FAMILIES)}")
    if noise not in NOISES:
        raise ValueError(f"noise={noise!r} is invalid: expected one of {NOISES}")


def stream(seed: int, name: str) -> torch.Generator:
    """The run's generator for one source of randomness (see :data:`STREAMS`).

    Each source has its own stream so that two schedulers run with the same seed see the same
    initialisation, minibatches, corrupted targets and noise draws, whatever their learning
    rates do: the comparison is paired.
    """
    state = np.random.SeedSequence([seed, STREAMS.index(name)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Trainee(Protocol):
    """What the training loop needs from a problem."""

    n_samples: int  # minibatches draw indices below this

    def parameters(self) -> list[torch.Tensor]: ...

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        """The differentiable loss of a minibatch (targets as observed)."""
        ...

    def losses(self) -> tuple[float, float]:
        """Full-batch loss on the targets as observed, and on the clean targets."""
        ...

    def project(self) -> None:
        """Put the parameters back into their feasible set after an update."""
        ...

    def shift(self) -> None:
        """Switch to the shifted data."""
        ...


class ClassifierTrainee:
    """Cross-entropy training of a classifier on in-memory tensors."""

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, observed: torch.Tensor
    ) -> None:
        self.model = model
        self.x = x
        self.y_clean = y
        self.y_observed = observed
        self.classes = int(y.max()) + 1
        self.n_samples = len(x)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(self.x[index]), self.y_observed[index])

    def losses(self) -> tuple[float, float]:
        with torch.no_grad():
            logits = self.model(self.x)
            observed = nn.functional.cross_entropy(logits, self.y_observed)
            clean = nn.functional.cross_entropy(logits, self.y_clean)
        return float(observed), float(clean)

    def project(self) -> None:
        pass

    def shift(self) -> None:
        self.y_clean = (self.y_clean + 1) % self.classes
        self.y_observed = (self.y_observed + 1) % self.classes


class FactorisationTrainee:
    """Non-negative factorisation ``V ~ W H`` by projected SGD on column minibatches.

    The loss is the mean squared residual (``V`` has unit RMS, so it is the fraction of
    ``V``'s energy left unexplained). ``W`` and ``H`` are updated together through autograd,
    not alternately as in the NMF env, so that every family shares one training loop.
    """

    def __init__(
        self,
        V: torch.Tensor,
        observed: torch.Tensor,
        W: torch.Tensor,
        H: torch.Tensor,
        shifted: torch.Tensor,
    ) -> None:
        self.V_clean = V
        self.V_observed = observed
        self.V_shifted = shifted
        self.W = nn.Parameter(W)
        self.H = nn.Parameter(H)
        self.n_samples = V.shape[1]

    def parameters(self) -> list[torch.Tensor]:
        return [self.W, self.H]

    def _mean_square(self, V: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        Rt = residual(V.mT, self.W.mT, H)  # nmf_ops holds V and W transposed
        return loss_from_residual(Rt) * (2.0 / Rt.numel())

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        return self._mean_square(self.V_observed[:, index], self.H[:, index])

    def losses(self) -> tuple[float, float]:
        with torch.no_grad():
            observed = self._mean_square(self.V_observed, self.H)
            clean = self._mean_square(self.V_clean, self.H)
        return float(observed), float(clean)

    def project(self) -> None:
        with torch.no_grad():
            self.W.clamp_min_(0.0)
            self.H.clamp_min_(0.0)

    def shift(self) -> None:
        self.V_clean = self.V_shifted
        self.V_observed = self.V_shifted


def _corrupt_labels(y: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    classes = int(y.max()) + 1
    flip = torch.rand(len(y), generator=gen) < fraction
    offset = torch.randint(1, classes, (len(y),), generator=gen)  # never the true class
    return torch.where(flip, (y + offset) % classes, y)


def _corrupt_entries(V: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(V.shape, generator=gen) < fraction
    source = torch.randint(0, V.numel(), V.shape, generator=gen)
    return torch.where(flip, V.reshape(-1)[source], V)


def _nmf_matrix(seed: int, which: int) -> torch.Tensor:
    # The run seed picks the matrix, so tuning seeds and evaluation seeds factorise different
    # matrices; ``which`` = 1 is the matrix the data shifts to.
    instance_seed = int(np.random.SeedSequence([seed, 1000 + which]).generate_state(1)[0])
    instance = NMFInstance(
        name=f"noisy-{seed}-{which}",
        family="noisy",
        split="train",
        source="synthetic",
        shape=NMF_SHAPE,
        seed=instance_seed,
        rank=NMF_RANK,
        batch_size=None,
        noise_std=0.0,
        horizon=1,
        true_rank=NMF_RANK,
        data_noise=NMF_DATA_NOISE,
    )
    return torch.tensor(instance.matrix(), dtype=torch.float32)


def _classifier_model(family: str, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    if family == "mlp":
        return build_model("mlp", input_shape, classes, width=64)
    if family == "cnn":
        return build_model("cnn", input_shape, classes, width=32)
    if family == "softmax":
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), classes))
    return build_model("gru", input_shape, classes, width=16, vocab=SEQ_VOCAB)


def build_trainee(family: str, noise: str, seed: int, strengths: NoiseStrengths) -> Trainee:
    """The problem ``family`` x ``noise`` with its parameters initialised from ``seed``."""
    check_problem(family, noise)
    targets = stream(seed, "targets")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=stream(seed, "init"))))
        if family == "nmf":
            V = _nmf_matrix(seed, 0)
            observed = V
            if noise == "label":
                observed = _corrupt_entries(V, strengths.label_fraction, targets)
            m, n = NMF_SHAPE
            scale = math.sqrt(float(V.mean()) / NMF_RANK)
            W = scale * torch.randn(m, NMF_RANK).abs()
            H = scale * torch.randn(NMF_RANK, n).abs()
            return FactorisationTrainee(V, observed, W, H, _nmf_matrix(seed, 1))
        data = study_data("sequence" if family == "gru" else "digits")
        model = _classifier_model(family, data.input_shape, data.classes)
    y = data.y_train
    observed = y
    if noise == "label":
        observed = _corrupt_labels(y, strengths.label_fraction, targets)
    return ClassifierTrainee(model, data.x_train, y, observed)


def study_data(task: str) -> TaskData:
    """The study's fixed data: every other digit image (or 1,200 generated token sequences),
    shuffled by a fixed seed, a quarter held out. Independent of the DNN env's instance pools,
    so the study's recorded results stay reproducible when those change."""
    if task == "digits":
        x, y = _images(task)
        x, y = x[::2], y[::2]
    else:
        x, y = _generated(task, seed=14)
    order = np.random.default_rng(7).permutation(len(x))
    x, y = x[order], y[order]
    n_val = len(x) // 4
    dtype = torch.long if task == "sequence" else torch.float32
    xt, yt = torch.as_tensor(np.ascontiguousarray(x), dtype=dtype), torch.as_tensor(y)
    return TaskData(
        task,
        xt[n_val:],
        yt[n_val:].long(),
        xt[:n_val],
        yt[:n_val].long(),
        10 if task == "digits" else SEQ_VOCAB,
        vocab=SEQ_VOCAB if task == "sequence" else 0,
    )


def build_family_optimizer(family: str, trainee: Trainee, lr: float) -> torch.optim.Optimizer:
    """The family's optimizer over the trainee's parameters, starting at ``lr``."""
    kind = FAMILIES[family].optimizer
    params = trainee.parameters()
    if kind == "adam":
        return build_optimizer("adam", params, lr, momentum=0.0, weight_decay=0.0)
    momentum = 0.9 if kind == "momentum" else 0.0
    return build_optimizer("sgd", params, lr, momentum=momentum, weight_decay=0.0)
