r"""The arithmetic of stochastic NMF and its learning-rate stability bound.

Every function takes torch tensors and works with or without leading batch dimensions
(``V`` of shape ``(..., m, n)``, ``W`` of ``(..., m, r)``, ``H`` of ``(..., r, n)``), so the
single environment and a batched one share one implementation.

The stability bound
-------------------
The loss is :math:`f(W, H) = \tfrac12 \lVert V - WH \rVert_F^2`.

*Deterministic bound.* With ``H`` fixed, ``f`` is a convex quadratic in ``W`` with gradient
:math:`\nabla_W f = (WH - V)H^\top`, which is Lipschitz with constant
:math:`L_W = \lVert H H^\top \rVert_2` (the largest eigenvalue of an ``r x r`` matrix);
likewise :math:`L_H = \lVert W^\top W \rVert_2`. For a projected gradient step
:math:`x^+ = \Pi_{\ge 0}(x - \eta \nabla f)` on an ``L``-smooth convex ``f``, the descent
lemma and the projection inequality give

.. math:: f(x^+) \le f(x) - \left(\tfrac1\eta - \tfrac L2\right)\lVert x^+ - x \rVert^2,

so every :math:`\eta \le 2/L` leaves the loss no higher. One learning rate shared by both
blocks of an alternating update is therefore safe for
:math:`\eta \le 2 / \max(L_W, L_H)`.

*Noisy bound.* With a stochastic gradient :math:`g = \nabla f + \xi`,
:math:`\mathbb E \xi = 0`, :math:`\mathbb E\lVert\xi\rVert^2 = s^2`, an unprojected step obeys

.. math:: \mathbb E f(x^+) \le f(x) - \eta\left(1 - \tfrac{L\eta}{2}\right)\lVert\nabla f\rVert^2
          + \tfrac{L\eta^2}{2}s^2,

whose right side is below :math:`f(x)` exactly when

.. math:: \eta < \frac{2}{L}\,\frac{\lVert\nabla f\rVert^2}{\lVert\nabla f\rVert^2 + s^2}.

The factor :math:`\rho = \lVert\nabla f\rVert^2 / (\lVert\nabla f\rVert^2 + s^2)` shrinks the
deterministic bound as noise dominates. ``s^2`` is known for additive noise
(``noise_std**2`` times the number of entries) and estimated for column minibatches: the
``W``-gradient estimate :math:`\hat g = \tfrac nb \sum_{j\in B} c_j` with per-column terms
:math:`c_j = R_{:j} H_{:j}^\top` (``R = WH - V``) sampled without replacement has

.. math:: \mathbb E\lVert\hat g - g\rVert^2 = \frac{n-b}{n-1}\left(\frac nb\sum_j
          \lVert R_{:j}\rVert^2 \lVert H_{:j}\rVert^2 - \frac{\lVert g\rVert^2}{b}\right),

cheap because each :math:`c_j` is rank one. The ``H``-update on a minibatch touches only the
sampled columns with their exact gradient, so its noise is the additive part alone.

This is lrrl's own derivation; the bound is computed at each decision from the current
factors, and inside a decision every block update is additionally kept below
``bound_scale * 2 / L`` of the factors it actually sees, so noise-free descent is
guaranteed at every inner step for ``bound_scale <= 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def residual(V: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``W @ H - V``."""
    return W @ H - V


def loss_from_residual(R: torch.Tensor) -> torch.Tensor:
    """``1/2 ||R||_F^2`` over the last two dimensions."""
    return 0.5 * R.square().sum(dim=(-2, -1))


def largest_eigenvalue(G: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of symmetric ``G``; ``inf`` where ``G`` is not finite (a blow-up)."""
    if bool(torch.isfinite(G).all()):
        return torch.linalg.eigvalsh(G)[..., -1]
    finite = torch.isfinite(G).all(dim=(-2, -1))
    safe = torch.where(finite[..., None, None], G, torch.zeros_like(G))
    return torch.where(
        finite,
        torch.linalg.eigvalsh(safe)[..., -1],
        torch.full_like(finite, math.inf, dtype=G.dtype),
    )


def lipschitz_w(H: torch.Tensor) -> torch.Tensor:
    """``L_W = ||H H^T||_2``: the Lipschitz constant of the ``W``-gradient for fixed ``H``."""
    return largest_eigenvalue(H @ H.mT)


def lipschitz_h(W: torch.Tensor) -> torch.Tensor:
    """``L_H = ||W^T W||_2``: the Lipschitz constant of the ``H``-gradient for fixed ``W``."""
    return largest_eigenvalue(W.mT @ W)


@dataclass
class BoundTerms:
    """Per-decision quantities behind the bound (tensors with the batch shape)."""

    lr_bound: torch.Tensor  # the bound used for clipping
    deterministic: torch.Tensor  # 2 / max(L_W, L_H)
    noise_ratio: torch.Tensor  # 1 - min(rho_W, rho_H): 0 noise-free, -> 1 noise-dominated


def stability_bound(
    V: torch.Tensor,
    W: torch.Tensor,
    H: torch.Tensor,
    noise_std: float,
    batch_size: int | None,
    noisy: bool = True,
    R: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
    n: torch.Tensor | None = None,
) -> BoundTerms:
    """The largest learning rate that guarantees (expected) descent from ``(W, H)``.

    ``noisy=False`` gives the deterministic ``2 / max(L_W, L_H)`` whatever the noise. ``m`` and
    ``n`` (batch-shaped) are the true sizes of zero-padded problems; by default ``V``'s shape.
    Zero padding changes nothing else: padded rows of ``W`` and columns of ``H`` stay zero.
    """
    if R is None:
        R = residual(V, W, H)
    r = W.shape[-1]
    eps = torch.finfo(V.dtype).tiny
    # One eigenvalue call for both r x r Gram matrices: L_W = ||H H^T||, L_H = ||W^T W||.
    dets = 2.0 / largest_eigenvalue(torch.stack([H @ H.mT, W.mT @ W])).clamp_min(eps)
    deterministic = dets.amin(dim=0)
    if noise_std == 0 and (batch_size is None or batch_size >= V.shape[-1]):
        # Exact gradients: rho = 1 for both blocks, so the gradient norms are not needed
        # (they would cost two more m x n x r products per decision).
        return BoundTerms(deterministic, deterministic, torch.zeros_like(deterministic))
    det_w, det_h = dets.unbind(0)
    like = dict(dtype=V.dtype, device=V.device)
    m = torch.as_tensor(V.shape[-2] if m is None else m, **like)
    n = torch.as_tensor(V.shape[-1] if n is None else n, **like)
    gW = R @ H.mT
    gW2 = gW.square().sum(dim=(-2, -1))
    gH2 = (W.mT @ R).square().sum(dim=(-2, -1))
    s2_w = noise_std**2 * r * m
    b = n if batch_size is None else n.clamp_max(batch_size)
    s2_h = noise_std**2 * r * b
    if batch_size is not None:
        sampled = b < n
        per_col = (R.square().sum(dim=-2) * H.square().sum(dim=-2)).sum(dim=-1)
        sampling = (n - b) / (n - 1).clamp_min(1) * ((n / b) * per_col - gW2 / b)
        s2_w = s2_w + torch.where(sampled, sampling.clamp_min(0.0), 0.0)
        gH2 = torch.where(sampled, gH2 * (b / n), gH2)  # the H-update sees the sampled columns
    rho_w = gW2 / (gW2 + s2_w).clamp_min(eps)
    rho_h = gH2 / (gH2 + s2_h).clamp_min(eps)
    # A zero gradient (a stationary point) carries no information on the noise: no shrinking.
    rho_w = torch.where(gW2 + s2_w > 0, rho_w, torch.ones_like(rho_w))
    rho_h = torch.where(gH2 + s2_h > 0, rho_h, torch.ones_like(rho_h))
    noise_ratio = 1.0 - torch.minimum(rho_w, rho_h)
    lr_bound = torch.minimum(det_w * rho_w, det_h * rho_h) if noisy else deterministic
    return BoundTerms(lr_bound=lr_bound, deterministic=deterministic, noise_ratio=noise_ratio)


@dataclass
class Draws:
    """The randomness of one decision's inner steps, drawn up front (leading dim: the step).

    Drawing a whole decision at once keeps the per-step cost low and lets a batched env
    reproduce a single env exactly: each problem draws from its own generator, in this order.
    """

    columns: torch.Tensor | None  # (steps, b) column indices; None: full gradient
    noise_w: torch.Tensor | None  # (steps, m, r) additive W-gradient noise, already scaled
    noise_h: torch.Tensor | None  # (steps, r, b or n) additive H-gradient noise


def draw(
    generator: torch.Generator,
    steps: int,
    shape: tuple[int, int],
    rank: int,
    batch_size: int | None,
    noise_std: float,
    dtype: torch.dtype,
    device: torch.device,
) -> Draws:
    """Column minibatches (uniform without replacement) and gradient noise for ``steps`` steps."""
    m, n = shape
    columns = None
    if batch_size is not None and batch_size < n:
        keys = torch.rand((steps, n), generator=generator, device=device)
        columns = keys.argsort(dim=-1)[:, :batch_size]
    noise_w = noise_h = None
    if noise_std > 0:
        cols = n if columns is None else batch_size
        kw = dict(generator=generator, dtype=dtype, device=device)
        noise_w = noise_std * torch.randn((steps, m, rank), **kw)
        noise_h = noise_std * torch.randn((steps, rank, cols), **kw)
    return Draws(columns, noise_w, noise_h)


def inner_step(
    V: torch.Tensor,
    W: torch.Tensor,
    H: torch.Tensor,
    lr: torch.Tensor,
    cap_scale: float | None,
    columns: torch.Tensor | None = None,
    noise_w: torch.Tensor | None = None,
    noise_h: torch.Tensor | None = None,
    n: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One alternating projected SGD step, ``W`` then ``H``; returns ``(W, H, min_cap)``.

    ``lr`` has the batch shape. ``columns`` (``(..., b)`` indices, one row per problem or one
    shared row) selects the column minibatch; ``None`` uses the full matrix. ``noise_w`` and
    ``noise_h`` are added to the two gradients (see :func:`draw`). ``n`` (batch-shaped) is the
    true column count of zero-padded problems, for the minibatch gradient's ``n / b`` scale.
    When ``cap_scale`` is given, each block's learning rate is kept below
    ``cap_scale * 2 / L`` of the factors that block update sees (the safeguard that makes
    descent hold at every inner step, not only where the bound was computed); ``min_cap`` is
    the smaller of the two caps, so ``lr > min_cap`` says where it bit.
    """
    lr = lr[..., None, None]
    if columns is None:
        V_b, H_b = V, H
    else:
        index = columns[..., None, :]
        b = columns.shape[-1]
        V_b = V.gather(-1, index.expand(*V.shape[:-1], b))
        H_idx = index.expand(*H.shape[:-1], b)
        H_b = H.gather(-1, H_idx)

    gW = (W @ H_b - V_b) @ H_b.mT
    if columns is not None:
        scale = V.shape[-1] / b if n is None else (n / b)[..., None, None]
        gW = gW * scale
    if noise_w is not None:
        gW = gW + noise_w
    min_cap = None
    lr_w = lr
    if cap_scale is not None:
        # L = 0 gives an infinite cap, which never binds.
        min_cap = (2.0 * cap_scale) / lipschitz_w(H)
        lr_w = torch.minimum(lr, min_cap[..., None, None])
    W = (W - lr_w * gW).clamp_min(0.0)

    gH = W.mT @ (W @ H_b - V_b)
    if noise_h is not None:
        gH = gH + noise_h
    lr_h = lr
    if cap_scale is not None:
        cap_h = (2.0 * cap_scale) / lipschitz_h(W)
        min_cap = torch.minimum(min_cap, cap_h)
        lr_h = torch.minimum(lr, cap_h[..., None, None])
    H_new = (H_b - lr_h * gH).clamp_min(0.0)
    H = H_new if columns is None else H.scatter(-1, H_idx, H_new)
    return W, H, min_cap
