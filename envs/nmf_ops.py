r"""The arithmetic of stochastic NMF and its learning-rate stability bound.

Every function takes torch tensors and works with or without leading batch dimensions, so
the single environment and a batched one share one implementation. Factors are held
transposed where that makes the batched products fast (see the layout note below):
``Vt = V^T`` of shape ``(..., n, m)``, ``Wt = W^T`` of ``(..., r, m)``, ``H`` of ``(..., r, n)``.

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
from typing import Any

import torch

#: The layout of every function below: ``Vt = V^T`` of shape ``(..., n, m)``, ``Wt = W^T`` of
#: shape ``(..., r, m)`` and ``H`` of shape ``(..., r, n)``. Holding the transposes puts the rank
#: as the small leading dimension of every batched product's output, with the long dimension
#: contiguous; on CPUs this runs small-rank batched products about five times faster than the
#: textbook orientation (``experiments/bench_env_overhead.py``).


def residual(Vt: torch.Tensor, Wt: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(W H - V)^T`` of shape ``(..., n, m)``."""
    if Vt.dim() == 3 and Wt.dim() == 3:  # one fused product-and-subtract, no temporary
        return torch.baddbmm(Vt, H.mT, Wt, beta=-1.0)
    return H.mT @ Wt - Vt


def residual_columns(Rt: torch.Tensor) -> torch.Tensor:
    """``||R_{:j}||^2`` per column ``j`` of ``R`` (a row of ``R^T``), shape ``(..., n)``."""
    return Rt.square().sum(dim=-1)


def loss_from_residual(Rt: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """``1/2 ||R||_F^2`` over the last two dimensions; from :func:`residual_columns` when
    they are given (one pass over the residual serves the loss and the bound)."""
    if columns is None:
        columns = residual_columns(Rt)
    return 0.5 * columns.sum(dim=-1)


def largest_eigenvalue(G: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of symmetric ``G``; ``inf`` where ``G`` is not finite (a blow-up).

    Non-finite matrices are zeroed before the eigensolver (which may fail on them) and their
    eigenvalue replaced afterwards, so no host synchronisation is needed to check for them.
    """
    finite = torch.isfinite(G).all(dim=-1).all(dim=-1)
    safe = torch.where(finite[..., None, None], G, 0.0)
    return torch.where(finite, torch.linalg.eigvalsh(safe)[..., -1], math.inf)


def _cap(G: torch.Tensor, cap_scale: float) -> torch.Tensor:
    """``cap_scale * 2 / L`` of a Gram matrix ``G`` inside a decision (``inf`` where ``L = 0``).

    Cheaper than :func:`largest_eigenvalue`: non-finite entries are zeroed and not flagged,
    because factors that blew up stay non-finite and the decision's loss reports it.
    """
    L = torch.linalg.eigvalsh(torch.nan_to_num(G, nan=0.0, posinf=0.0, neginf=0.0))[..., -1]
    return L.reciprocal_().mul_(2.0 * cap_scale)


def lipschitz_w(H: torch.Tensor) -> torch.Tensor:
    """``L_W = ||H H^T||_2``: the Lipschitz constant of the ``W``-gradient for fixed ``H``."""
    return largest_eigenvalue(H @ H.mT)


def lipschitz_h(Wt: torch.Tensor) -> torch.Tensor:
    """``L_H = ||W^T W||_2``: the Lipschitz constant of the ``H``-gradient for fixed ``W``."""
    return largest_eigenvalue(Wt @ Wt.mT)


@dataclass
class BoundTerms:
    """Per-decision quantities behind the bound (tensors with the batch shape)."""

    lr_bound: torch.Tensor  # the bound used for clipping
    deterministic: torch.Tensor  # 2 / max(L_W, L_H)
    noise_ratio: torch.Tensor  # 1 - min(rho_W, rho_H): 0 noise-free, -> 1 noise-dominated


def stability_bound(
    Vt: torch.Tensor,
    Wt: torch.Tensor,
    H: torch.Tensor,
    noise_std: torch.Tensor | None = None,
    batch_size: torch.Tensor | None = None,
    noisy: bool = True,
    Rt: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
    n: torch.Tensor | None = None,
    r: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> BoundTerms:
    """The largest learning rate that guarantees (expected) descent from ``(W, H)``.

    Per problem of the batch: ``noise_std`` the additive gradient noise (``None``: none
    anywhere), ``batch_size`` the column minibatch size, equal to ``n`` for full gradients
    (``None``: full gradients everywhere), ``m``, ``n`` and ``r`` the true sizes of
    zero-padded problems (by default the tensors' own). Zero padding changes nothing else:
    padded rows and columns of ``W`` and ``H`` stay zero. ``noisy=False`` gives the
    deterministic ``2 / max(L_W, L_H)`` whatever the noise. ``Rt`` is the residual
    :func:`residual`, and ``columns`` its :func:`residual_columns`, if already computed.
    """
    eps = torch.finfo(Vt.dtype).tiny
    # One eigenvalue call for both r x r Gram matrices: L_W = ||H H^T||, L_H = ||W^T W||.
    dets = 2.0 / largest_eigenvalue(torch.stack([H @ H.mT, Wt @ Wt.mT])).clamp_min(eps)
    deterministic = dets.amin(dim=0)
    if noise_std is None and batch_size is None:
        # Exact gradients: rho = 1 for both blocks, so the gradient norms are not needed
        # (they would cost two more m x n x r products per decision).
        return BoundTerms(deterministic, deterministic, torch.zeros_like(deterministic))
    if Rt is None:
        Rt = residual(Vt, Wt, H)
    det_w, det_h = dets.unbind(0)
    like: dict[str, Any] = dict(dtype=Vt.dtype, device=Vt.device)
    m = torch.as_tensor(Vt.shape[-1] if m is None else m, **like)
    n = torch.as_tensor(Vt.shape[-2] if n is None else n, **like)
    r = torch.as_tensor(Wt.shape[-2] if r is None else r, **like)
    b = n if batch_size is None else torch.as_tensor(batch_size, **like)
    gW2 = (H @ Rt).square().sum(dim=(-2, -1))  # grad_W^T = H R^T
    gH2 = (Wt @ Rt.mT).square().sum(dim=(-2, -1))  # grad_H = W^T R
    s2 = torch.as_tensor(0.0 if noise_std is None else noise_std, **like).square()
    s2_w = s2 * r * m
    s2_h = s2 * r * b
    if batch_size is not None:
        # Sampling b of n columns without replacement; zero for full gradients (b = n).
        if columns is None:
            columns = residual_columns(Rt)
        per_col = (columns * H.square().sum(dim=-2)).sum(dim=-1)
        sampling = (n - b) / (n - 1).clamp_min(1) * ((n / b) * per_col - gW2 / b)
        s2_w = s2_w + sampling.clamp_min(0.0)
        gH2 = gH2 * (b / n)  # the H-update sees the sampled columns only
    rho_w = gW2 / (gW2 + s2_w).clamp_min(eps)
    rho_h = gH2 / (gH2 + s2_h).clamp_min(eps)
    # A zero gradient (a stationary point) carries no information on the noise: no shrinking.
    rho_w = torch.where(gW2 + s2_w > 0, rho_w, 1.0)
    rho_h = torch.where(gH2 + s2_h > 0, rho_h, 1.0)
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
    noise_w: torch.Tensor | None  # (steps, r, m) additive noise of grad_W^T, already scaled
    noise_h: torch.Tensor | None  # (steps, r, b or n) additive noise of grad_H


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
        cols = n if columns is None or batch_size is None else batch_size
        kw: dict[str, Any] = dict(generator=generator, dtype=dtype, device=device)
        noise_w = noise_std * torch.randn((steps, rank, m), **kw)
        noise_h = noise_std * torch.randn((steps, rank, cols), **kw)
    return Draws(columns, noise_w, noise_h)


def inner_step(
    Vt: torch.Tensor,
    Wt: torch.Tensor,
    H: torch.Tensor,
    lr: torch.Tensor,
    cap_scale: float | None,
    columns: torch.Tensor | None = None,
    noise_w: torch.Tensor | None = None,
    noise_h: torch.Tensor | None = None,
    n: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    with_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One alternating projected SGD step, ``W`` then ``H``; returns ``(Wt, H, min_cap, loss)``.

    ``lr`` has the batch shape. ``columns`` (``(..., b)`` indices, one row per problem)
    selects the column minibatch; ``None`` uses the full matrix. ``noise_w`` and ``noise_h``
    are added to the two gradients (see :func:`draw`). ``n`` and ``b`` (batch-shaped) are the
    true column count and minibatch size of padded problems (a minibatch padded with a zero
    column), for the minibatch gradient's ``n / b`` scale; by default the tensors' own. When
    ``cap_scale`` is given, each block's learning rate is kept below ``cap_scale * 2 / L`` of
    the factors that block update sees (the safeguard that makes descent hold at every inner
    step, not only where the bound was computed); ``min_cap`` is the smaller of the two caps,
    so ``lr > min_cap`` says where it bit. With ``with_loss``, ``loss`` is the step's training
    loss as an optimizer sees it: the minibatch loss before the update, scaled by ``n / b`` to
    estimate the full loss (the full loss for full gradients).

    The gradients are computed through the Gram matrices, ``grad_W = W (H H^T) - V H^T`` and
    ``grad_H = (W^T W) H - W^T V``: two products with ``V`` per step and no ``m x n`` residual,
    which for small ranks makes the step bound by reading ``V`` twice rather than by writing
    and re-reading residuals; the ``r x r`` Gram matrices also give the safeguard's ``L``.
    """
    lr = lr[..., None, None]
    scale = None
    if columns is None:
        Vt_b, H_b = Vt, H
    else:
        width = columns.shape[-1]
        n_pad = Vt.shape[-2]
        # Rows of V^T are columns of V: one contiguous copy per sampled column.
        batch = columns.shape[:-1]
        offsets = torch.arange(columns[..., 0].numel(), device=columns.device) * n_pad
        flat = (offsets.view(*batch, 1) + columns).reshape(-1)
        Vt_b = Vt.reshape(-1, Vt.shape[-1]).index_select(0, flat).view(*batch, width, Vt.shape[-1])
        H_idx = columns[..., None, :].expand(*H.shape[:-1], width)
        H_b = H.gather(-1, H_idx)
        size = columns.shape[-1] if b is None else b
        scale = (n_pad if n is None else n) / size
        if torch.is_tensor(scale):
            scale = scale[..., None, None]

    loss = None
    if with_loss:  # the residual itself: exact where the Gram form would cancel
        loss = loss_from_residual(residual(Vt_b, Wt, H_b))
        if scale is not None:
            loss = loss * (scale[..., 0, 0] if torch.is_tensor(scale) else scale)
    HHt_b = H_b @ H_b.mT
    gWt = (
        torch.baddbmm(HHt_b @ Wt, H_b, Vt_b, alpha=-1.0)
        if Wt.dim() == 3
        else (HHt_b @ Wt - H_b @ Vt_b)
    )  # grad_W^T
    if scale is not None:
        gWt = gWt * scale
    if noise_w is not None:
        gWt = gWt + noise_w
    min_cap = None
    lr_w = lr
    if cap_scale is not None:
        # L_W of the full loss is ||H H^T|| (the minibatch's only for full gradients).
        # L = 0 gives an infinite cap, which never binds.
        min_cap = _cap(HHt_b if columns is None else H @ H.mT, cap_scale)
        lr_w = torch.minimum(lr, min_cap[..., None, None])
    Wt = torch.addcmul(Wt, lr_w, gWt, value=-1.0).clamp_min_(0.0)

    WtW = Wt @ Wt.mT
    gH = (
        torch.baddbmm(WtW @ H_b, Wt, Vt_b.mT, alpha=-1.0)
        if Wt.dim() == 3
        else (WtW @ H_b - Wt @ Vt_b.mT)
    )
    if noise_h is not None:
        gH = gH + noise_h
    lr_h = lr
    if cap_scale is not None:
        cap_h = _cap(WtW, cap_scale)
        assert min_cap is not None  # set with the W block's cap
        min_cap = torch.minimum(min_cap, cap_h)
        lr_h = torch.minimum(lr, cap_h[..., None, None])
    H_new = torch.addcmul(H_b, lr_h, gH, value=-1.0).clamp_min_(0.0)
    H = H_new if columns is None else H.scatter(-1, H_idx, H_new)
    return Wt, H, min_cap, loss
