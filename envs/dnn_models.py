"""Small plain-torch models of the DNN env, their inner optimizers and the sharpness estimate.

torchvision does not import beside the CPU torch used here, so every model is written with
``torch.nn`` alone. Models are built once per env and re-initialised in place at each reset
(:func:`reinitialise`), so no episode pays for building one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

#: Inner optimizers. The first three are scheduled by the agent; the learning-rate-free ones
#: (schedule-free SGD/AdamW, Prodigy) are references run at their recommended learning rate.
OPTIMIZERS = ("sgd", "adam", "adamw", "schedulefree_sgd", "schedulefree_adamw", "prodigy")
#: Optimizers whose step is normalised per coordinate (the observation flags them).
ADAPTIVE = ("adam", "adamw", "schedulefree_adamw", "prodigy")


def mlp(in_features: int, classes: int, width: int) -> nn.Sequential:
    """Two hidden ReLU layers of ``width`` units on flattened inputs."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def cnn(channels: int, classes: int, width: int) -> nn.Sequential:
    """Two 3x3 convolutions (``width // 4`` and ``width // 2`` channels), pooling, a linear head."""
    c1, c2 = max(4, width // 4), max(8, width // 2)
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c2, classes),
    )


class GRUClassifier(nn.Module):
    """Token embedding, a one-layer GRU, a linear head on the last hidden state."""

    def __init__(self, vocab: int, classes: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, max(8, width // 2))
        self.gru = nn.GRU(max(8, width // 2), width, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embed(x))
        return self.head(h[-1])


class AttentionClassifier(nn.Module):
    """Token and position embeddings, one self-attention block, mean pooling, a linear head."""

    def __init__(self, vocab: int, length: int, classes: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.empty(length, width))
        self.attention = nn.MultiheadAttention(width, num_heads=2, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.position, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position
        a, _ = self.attention(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(dim=1))


def build_model(
    model: str, input_shape: Sequence[int], classes: int, width: int, vocab: int = 0
) -> nn.Module:
    """The ``model`` network for inputs of ``input_shape`` (without the batch dimension)."""
    if model == "mlp":
        return mlp(math.prod(input_shape), classes, width)
    if model == "cnn":
        return cnn(int(input_shape[0]), classes, width)
    if model == "gru":
        return GRUClassifier(vocab, classes, width)
    if model == "attention":
        return AttentionClassifier(vocab, int(input_shape[0]), classes, width)
    raise ValueError(f"model={model!r} is invalid: expected mlp, cnn, gru or attention")


def reinitialise(model: nn.Module, seed: int) -> None:
    """Draw fresh parameters in place from ``seed`` (the global torch RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def _reference_optimizer(name: str) -> Callable[..., torch.optim.Optimizer]:
    try:
        if name == "prodigy":
            from prodigyopt import Prodigy

            return Prodigy
        import schedulefree

        return (
            schedulefree.SGDScheduleFree
            if name == "schedulefree_sgd"
            else (schedulefree.AdamWScheduleFree)
        )
    except ImportError:
        package = "prodigyopt" if name == "prodigy" else "schedulefree"
        raise ValueError(
            f"optimizer={name!r} needs {package} (a dependency of lrrl): pip install {package}"
        ) from None


def check_optimizer(name: str) -> None:
    """Raise a one-line ``ValueError`` for unknown or uninstallable optimizers."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is invalid: expected one of {OPTIMIZERS}")
    if name not in ("sgd", "adam", "adamw"):
        _reference_optimizer(name)


def build_optimizer(
    name: str, params: Sequence[torch.Tensor], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """A fresh inner optimizer; ``momentum`` applies to SGD (and is Adam's ``beta1`` otherwise)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    cls = _reference_optimizer(name)
    if name == "schedulefree_sgd":
        return cls(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return cls(params, lr=lr, weight_decay=weight_decay)


def top_hessian_eigenvalue(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    iters: int,
    generator: torch.Generator,
) -> float:
    """The largest-magnitude Hessian eigenvalue of ``loss_fn`` at ``params`` by power iteration.

    Each iteration is one Hessian-vector product (double backward through the loss gradient);
    the estimate is the Rayleigh quotient ``v^T H v`` of the last unit vector ``v``. NaN when
    the loss or a product is not finite.
    """
    params = [p for p in params if p.requires_grad]
    loss = loss_fn()
    if not torch.isfinite(loss):
        return math.nan
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = torch.sqrt(torch.stack([(x * x).sum() for x in v]).sum())
    v = [x / norm for x in v]
    eigenvalue = math.nan
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eigenvalue = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(torch.stack([(x * x).sum() for x in hv]).sum())
        if not (math.isfinite(eigenvalue) and torch.isfinite(norm)) or float(norm) == 0.0:
            return eigenvalue if math.isfinite(eigenvalue) else math.nan
        v = [x.detach() / norm for x in hv]
    return eigenvalue
