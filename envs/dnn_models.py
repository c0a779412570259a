"""Small plain-torch models of the DNN env, their inner optimizers and the sharpness estimate.

torchvision does not import beside the CPU torch used here, so every model is written with
``torch.nn`` alone. Models are built once per env and re-initialised in place at each reset
(:func:`reinitialise`), so no episode pays for building one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Inner optimizers. The first three are scheduled by the agent; the learning-rate-free ones
#: (schedule-free SGD/AdamW, Prodigy) are references run at their recommended learning rate.
OPTIMIZERS = ("sgd", "adam", "adamw", "schedulefree_sgd", "schedulefree_adamw", "prodigy")
#: Optimizers whose step is normalised per coordinate (the observation flags them).
ADAPTIVE = ("adam", "adamw", "schedulefree_adamw", "prodigy")
#: Learning rates of the actions -1 and +1 for each optimizer (``DNNEnv(lr_range=...)``), so
#: one action means "the same step relative to what this optimizer needs" for SGD and Adam
#: alike. SGD (momentum 0.9): two decades around 0.1. Adam/AdamW: SGD's range / 10, the ratio
#: of their best constant and cosine rates on every task at 200 and 1,000 steps
#: (notes/dnn2.md). The learning-rate-free optimizers: two decades around their package's
#: recommended rate.
DEFAULT_LR_RANGES: dict[str, tuple[float, float]] = {
    "sgd": (1e-2, 1.0),
    "adam": (1e-3, 1e-1),
    "adamw": (1e-3, 1e-1),
    "schedulefree_sgd": (1e-1, 10.0),
    "schedulefree_adamw": (2.5e-4, 2.5e-2),
    "prodigy": (1e-1, 10.0),
}


def prediction_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over samples, and over positions for per-position targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The number of right predictions (of every position for per-position targets)."""
    return (logits.argmax(dim=-1) == y).sum()


def gradient_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients, as a tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@torch.no_grad()
def validation(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``net``'s loss and accuracy on ``(x, y)`` in eval mode, in one host transfer; a
    non-finite loss reads as ``inf``. The net is left in eval mode."""
    net.eval()
    logits = net(x)
    loss, right = torch.stack([prediction_loss(logits, y), correct(logits, y)]).tolist()
    return (loss if math.isfinite(loss) else math.inf), right / y.numel()


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


def cnn(input_shape: Sequence[int], classes: int, width: int) -> nn.Sequential:
    """Two strided 3x3 convolutions (``width // 4`` and ``width // 2`` channels), then an MLP head.

    Stride 2 instead of convolution + max-pooling: the same 4x downsampling (28x28 MNIST to
    7x7, 8x8 digits to 2x2) at a quarter of the convolution cost, which on one CPU thread is
    what decides whether a 1,000-step episode takes seconds or tens of seconds.
    """
    channels, height, width_in = (int(s) for s in input_shape)
    c1, c2 = max(4, width // 4), max(8, width // 2)
    side = ((height + 1) // 2 + 1) // 2, ((width_in + 1) // 2 + 1) // 2
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * side[0] * side[1], width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


class GRUNet(nn.Module):
    """Token embedding and a one-layer GRU; a linear head on the last hidden state
    (classification) or on every position (``per_position``: next-token prediction)."""

    def __init__(self, vocab: int, classes: int, width: int, per_position: bool = False) -> None:
        super().__init__()
        self.per_position = per_position
        self.embed = nn.Embedding(vocab, max(8, width // 2))
        self.gru = nn.GRU(max(8, width // 2), width, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.gru(self.embed(x))
        return self.head(out if self.per_position else h[-1])


class AttentionNet(nn.Module):
    """Token and position embeddings, one pre-norm transformer block (two-head self-attention
    and a 2x-wide MLP), a linear head.

    ``causal``: each position attends to itself and earlier ones and the head predicts at
    every position (a character language model); otherwise the block attends everywhere and
    the head reads the mean over positions (a sequence classifier).
    """

    def __init__(
        self, vocab: int, length: int, classes: int, width: int, causal: bool = False
    ) -> None:
        super().__init__()
        self.causal = causal
        self.heads = 2 if width % 2 == 0 else 1
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.empty(length, width))
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.position, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape
        h = self.embed(x) + self.position[:length]
        q, k, v = (
            self.qkv(self.norm1(h))
            .view(batch, length, 3, self.heads, -1)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        h = h + self.proj(a.transpose(1, 2).reshape(batch, length, -1))
        h = self.norm(h + self.mlp(self.norm2(h)))
        return self.head(h if self.causal else h.mean(dim=1))


def build_model(
    model: str,
    input_shape: Sequence[int],
    classes: int,
    width: int,
    vocab: int = 0,
    per_position: bool = False,
) -> nn.Module:
    """The ``model`` network for inputs of ``input_shape`` (without the batch dimension);
    ``per_position``: a prediction at every input position (sequence models only)."""
    if model == "mlp":
        return mlp(math.prod(input_shape), classes, width)
    if model == "cnn":
        return cnn(input_shape, classes, width)
    if model == "gru":
        return GRUNet(vocab, classes, width, per_position)
    if model == "attention":
        return AttentionNet(vocab, int(input_shape[0]), classes, width, causal=per_position)
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


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The :data:`OPTIMIZERS` name of an optimizer object (its exact class decides: AdamW
    subclasses Adam in torch, and is not Adam here)."""
    classes: dict[str, Any] = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
    }
    for name in OPTIMIZERS[3:]:
        try:
            classes[name] = _reference_optimizer(name)
        except ValueError:  # its package is missing: no optimizer can be of that class
            continue
    for name, cls in classes.items():
        if type(optimizer) is cls:
            return name
    raise ValueError(
        f"optimizer={type(optimizer).__name__} is invalid: expected one of "
        + ", ".join(f"{c.__module__}.{c.__name__}" for c in classes.values())
    )


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
