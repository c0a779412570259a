"""``B`` NMF episodes in flight: the factors, the clip, the reward and the bookkeeping, batched.

:class:`NMFEpisodes` is the one implementation of an ``lrrl/NMF-v0`` episode. The single env
runs it with ``B = 1``; the batched vector env and the batched evaluation with ``B`` in the
hundreds. Episodes of one batch may differ in everything an instance sets (shape, rank,
minibatch size, gradient noise, horizon): factors live in zero-padded tensors
``V^T (B, N, M)``, ``W^T (B, R, M)``, ``H (B, R, N)`` (the layout of :mod:`lrrl.envs.nmf_ops`),
and each decision runs the episodes of similar minibatch sizes (within a factor of four) as one
group of batched tensor ops, cropped to the group's largest shape; a group's minibatches are
padded to its largest with an always-zero column, which adds nothing to any gradient. Zero padding is exact: padded rows and columns of ``W`` and ``H`` stay zero and add
nothing to the loss, the gradients or the bound (:mod:`lrrl.envs.nmf_ops` takes the true
sizes).

Each episode draws its randomness (initial factors, minibatches, gradient noise) from its own
``torch.Generator``, in the same order whatever the batch, so an episode is the same in a
batch of one and in a batch of a thousand, up to floating-point summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lrrl.envs import nmf_ops
from lrrl.envs.base import InnerControl
from lrrl.envs.nmf_instances import NMFInstance

if TYPE_CHECKING:
    from lrrl.envs.nmf import NMFConfig

#: Recent log-loss changes in the observation.
HISTORY = 3
OBS_SIZE = 8
OBS_LIMIT = 50.0


#: Episodes stepped together above which groups are also split by size (see ``_groups``).
SPLIT_ABOVE = 32


@dataclass
class Transition:
    """What one decision did to each episode of the batch (arrays of length ``B``)."""

    lr: np.ndarray  # applied (after the clip); the request where nothing could be applied
    lr_bound: np.ndarray  # the bound the request was clipped to (inf without one)
    clipped: np.ndarray  # the request exceeded the clip
    loss: np.ndarray
    reward: np.ndarray
    diverged: np.ndarray  # terminated by a blow-up
    truncated: np.ndarray  # the episode reached its horizon
    inner_capped: np.ndarray  # inner steps whose lr the safeguard cut


class NMFEpisodes:
    """``size`` NMF episodes stepped together (see the module docstring)."""

    def __init__(self, config: NMFConfig, size: int) -> None:
        self.config = config
        self.size = B = size
        self.dtype, self.device = config.torch_dtype, torch.device(config.device)
        self._like = dict(dtype=self.dtype, device=self.device)
        self.instances: list[NMFInstance | None] = [None] * B
        self._gens: list[torch.Generator | None] = [None] * B
        self._matrices: dict[NMFInstance, torch.Tensor] = {}
        # Per-episode settings, from the instance.
        self.m = np.ones(B, dtype=np.int64)
        self.n = np.ones(B, dtype=np.int64)
        self.r = np.ones(B, dtype=np.int64)
        self.batch = np.zeros(B, dtype=np.int64)  # minibatch size; 0: full gradients
        self.noise_std = np.zeros(B)
        self.horizon = np.ones(B, dtype=np.int64)
        # Zero-padded factors (V^T, W^T, H), grown to the largest instance loaded so far.
        self._Vt = torch.zeros((B, 1, 1), **self._like)
        self._Wt = torch.zeros((B, 1, 1), **self._like)
        self._H = torch.zeros((B, 1, 1), **self._like)
        # Bookkeeping.
        self.t = np.zeros(B, dtype=np.int64)
        self.loss0 = np.ones(B)
        self.loss = np.ones(B)
        self.deltas = np.zeros((B, HISTORY))
        self.fraction = np.full(B, math.nan)  # the last lr over the clip it was applied under
        self.lr_bound = np.ones(B)
        self.noise_ratio = np.zeros(B)
        self.healthy = np.ones(B, dtype=bool)

    # -- starting episodes -----------------------------------------------------------------

    def load(self, i: int, instance: NMFInstance, seed: int) -> None:
        """Start a fresh episode of ``instance`` in slot ``i``: the initial factors are drawn
        from a new generator seeded with ``seed``; :meth:`start` completes the reset."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        m, n = instance.shape
        r = instance.rank
        Vt = self._matrix(instance)
        init_scale = math.sqrt(float(Vt.mean()) / r)
        Wt = init_scale * torch.randn((r, m), generator=gen, **self._like).abs()
        H = init_scale * torch.randn((r, n), generator=gen, **self._like).abs()
        if self.size == 1:  # one episode: exact shapes, bar the one zero column (see _crop)
            self._Vt = torch.zeros((1, n + 1, m), **self._like)
            self._Vt[0, :n] = Vt
            self._Wt = Wt[None]
            self._H = torch.zeros((1, r, n + 1), **self._like)
            self._H[0, :, :n] = H
        else:
            self._grow(m, n + 1, r)
            self._Vt[i].zero_()
            self._Wt[i].zero_()
            self._H[i].zero_()
            self._Vt[i, :n, :m] = Vt
            self._Wt[i, :r, :m] = Wt
            self._H[i, :r, :n] = H
        self.instances[i], self._gens[i] = instance, gen
        self.m[i], self.n[i], self.r[i] = m, n, r
        self.batch[i] = instance.batch_size or 0
        self.noise_std[i] = instance.noise_std
        self.horizon[i] = instance.horizon

    def start(self, idx: np.ndarray) -> None:
        """Initial loss, bound and counters of the episodes just loaded into slots ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return
        for group in self._groups(idx):
            Vt, Wt, H = self._crop(group)
            with torch.no_grad():
                loss_t, terms = self._loss_and_bound(group, Vt, Wt, H)
                values = torch.stack([loss_t, terms.lr_bound, terms.noise_ratio])
            loss, bound, ratio = values.double().cpu().numpy()
            self.loss0[group] = self.loss[group] = loss
            self._set_bound(group, loss, bound, ratio)
        self.deltas[idx] = 0.0
        self.fraction[idx] = math.nan
        self.t[idx] = 0

    # -- one decision ----------------------------------------------------------------------

    @property
    def clip(self) -> np.ndarray:
        """The largest learning rate each episode's next decision may apply."""
        if self.config.bound == "none":
            return np.full(self.size, math.inf)
        return self.config.bound_scale * self.lr_bound

    def step(
        self,
        requested: np.ndarray,
        active: np.ndarray | None = None,
        inner: InnerControl | None = None,
    ) -> Transition:
        """Run one decision of the ``active`` episodes at the ``requested`` learning rates.

        Each request is clipped to the episode's clip; ``inner``, if given, may change the
        learning rate of the following inner steps from the inner training losses (a
        per-step controller; still clipped). Inactive episodes keep their state.
        """
        cfg, B = self.config, self.size
        active = np.ones(B, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        requested = np.asarray(requested, dtype=np.float64)
        clip = self.clip
        lr_bound = self.lr_bound.copy() if cfg.bound != "none" else np.full(B, math.inf)
        running = active & self.healthy
        with np.errstate(invalid="ignore"):
            clipped = running & (requested > clip * (1.0 + 1e-6))
        lr = np.minimum(requested, clip)
        loss_prev = self.loss.copy()
        inner_capped = np.zeros(B, dtype=np.int64)
        new_bound, new_ratio = self.lr_bound.copy(), self.noise_ratio.copy()
        loss = self.loss.copy()
        for group in self._groups(np.flatnonzero(running)):
            out = self._decide(group, lr[group], clip[group], inner)
            loss[group], inner_capped[group], new_bound[group], new_ratio[group] = out

        self.t += active
        with np.errstate(invalid="ignore", over="ignore"):
            blown = ~np.isfinite(loss) | (loss > cfg.max_loss_ratio * self.loss0)
        fresh = running & ~blown
        self._set_bound(np.flatnonzero(fresh), loss[fresh], new_bound[fresh], new_ratio[fresh])
        # A bad bound (non-finite factors) is a blow-up too; so is stepping a dead episode.
        diverged = active & (blown | ~self.healthy)
        self.healthy &= ~diverged

        safe_prev, safe_loss = np.maximum(loss_prev, 1e-300), np.maximum(loss, 1e-300)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if cfg.reward == "log_ratio":
                reward = np.log(safe_prev) - np.log(safe_loss)
            else:
                reward = (loss_prev - loss) / self.loss0
            delta = np.log(safe_loss) - np.log(safe_prev)
        reward = np.where(diverged, -cfg.divergence_penalty, np.where(active, reward, 0.0))
        grow = running & ~diverged
        self.deltas[grow] = np.concatenate([delta[grow, None], self.deltas[grow, :-1]], axis=1)
        self.loss = np.where(running, loss, self.loss)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.fraction = np.where(running & np.isfinite(clip), lr / clip, self.fraction)
        applied = np.where(running, lr, np.where(np.isnan(requested), 0.0, requested))
        return Transition(
            lr=applied,
            lr_bound=lr_bound,
            clipped=clipped,
            loss=self.loss.copy(),
            reward=reward,
            diverged=diverged,
            truncated=active & (self.t >= self.horizon),
            inner_capped=inner_capped,
        )

    def observations(self) -> np.ndarray:
        """The ``(B, 8)`` observations (see :class:`lrrl.envs.nmf.NMFEnv`)."""
        return nmf_observation(
            loss=self.loss,
            loss0=self.loss0,
            deltas=self.deltas,
            fraction=self.fraction,
            lr_bound=None if self.config.bound == "none" else self.lr_bound,
            noise_ratio=self.noise_ratio,
            progress=self.t / self.horizon,
        )

    def factors(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slot ``i``'s ``(V, W, H)`` without padding, as numpy arrays."""
        m, n, r = self.m[i], self.n[i], self.r[i]
        return (
            self._Vt[i, :n, :m].T.cpu().numpy(),
            self._Wt[i, :r, :m].T.cpu().numpy(),
            self._H[i, :r, :n].cpu().numpy(),
        )

    # -- internals ------------------------------------------------------------------------

    def _matrix(self, inst: NMFInstance) -> torch.Tensor:
        """The instance's ``V^T`` on the device (cached by instance, not by name)."""
        if inst not in self._matrices:
            self._matrices[inst] = torch.tensor(inst.matrix().T, **self._like).contiguous()
        return self._matrices[inst]

    def _grow(self, m: int, n: int, r: int) -> None:
        """Enlarge the padded tensors so that an ``m x n`` rank-``r`` episode fits."""
        B, R, M = self._Wt.shape
        N = self._H.shape[-1]
        if m <= M and n <= N and r <= R:
            return
        M, N, R = max(M, m), max(N, n), max(R, r)
        for name, shape in (("_Vt", (B, N, M)), ("_Wt", (B, R, M)), ("_H", (B, R, N))):
            old = getattr(self, name)
            new = torch.zeros(shape, **self._like)
            new[:, : old.shape[1], : old.shape[2]] = old
            setattr(self, name, new)

    def _groups(self, idx: np.ndarray) -> list[np.ndarray]:
        """``idx`` split into groups that run as one set of batched ops each.

        A group is padded to its largest episode. Episodes share a group when they have the
        same kind of gradient (full, or minibatch sizes within a factor of four: 2-4, 5-16,
        17-64, ...); with more than :data:`SPLIT_ABOVE` episodes, also only when ``m``, ``n``
        and ``r`` are each within a factor of two. Each group costs a fixed Python and
        per-operation overhead per inner step, so a few sub-envs (training) run fastest padded
        together, while an evaluation chunk of a mixed suite, padded to its largest matrix and
        rank, would do ten times the arithmetic of its median instance.
        """
        if idx.size == 0:
            return []
        sizes = self.batch[idx]

        def bucket(x: np.ndarray, base: float) -> np.ndarray:
            return np.ceil(np.log(np.maximum(x, 1)) / np.log(base)).astype(np.int64)

        # 0 for full gradients, else 1 + the power-of-four bucket of the minibatch size.
        columns = [np.where(sizes > 0, bucket(sizes, 4.0) + 1, 0)]
        if idx.size > SPLIT_ABOVE:
            columns += [
                bucket(self.m[idx], 2.0),
                bucket(self.n[idx], 2.0),
                bucket(self.r[idx], 2.0),
            ]
        keys = np.stack(columns, axis=1)
        if (keys == keys[0]).all():
            return [idx]
        _, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.reshape(-1)
        return [idx[which == k] for k in range(int(which.max()) + 1)]

    def _crop(self, group: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The group's factors, cropped to its largest shape (views when nothing is cut).

        One column more than the widest episode is kept: it is zero in every episode of the
        group, so padded minibatches point there and change nothing.
        """
        M, R = int(self.m[group].max()), int(self.r[group].max())
        N = int(self.n[group].max()) + 1
        if group.size == self.size and (self.size, R, N, M) == (*self._H.shape, self._Vt.shape[2]):
            return self._Vt, self._Wt, self._H
        index = torch.as_tensor(group, device=self.device)
        return (
            self._Vt[index, :N, :M],
            self._Wt[index, :R, :M],
            self._H[index, :R, :N],
        )

    def _store(self, group: np.ndarray, Wt: torch.Tensor, H: torch.Tensor) -> None:
        if Wt.shape == self._Wt.shape and H.shape == self._H.shape:
            self._Wt, self._H = Wt, H
            return
        index = torch.as_tensor(group, device=self.device)
        R, M = Wt.shape[1:]
        N = H.shape[2]
        self._Wt[index, :R, :M] = Wt
        self._H[index, :R, :N] = H

    def _sizes(self, group: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def as_t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x[group], **self._like)

        return as_t(self.m), as_t(self.n), as_t(self.r)

    def _loss_and_bound(
        self, group: np.ndarray, Vt: torch.Tensor, Wt: torch.Tensor, H: torch.Tensor
    ) -> tuple[torch.Tensor, nmf_ops.BoundTerms]:
        """The loss and the stability bound at ``(W, H)``, sharing the residual's one pass."""
        cfg = self.config
        m, n, r = self._sizes(group)
        minibatch = bool(self.batch[group[0]])
        noisy = bool((self.noise_std[group] > 0).any())
        Rt = nmf_ops.residual(Vt, Wt, H)
        columns = nmf_ops.residual_columns(Rt)
        loss = nmf_ops.loss_from_residual(Rt, columns)
        return loss, nmf_ops.stability_bound(
            Vt,
            Wt,
            H,
            noise_std=torch.as_tensor(self.noise_std[group], **self._like) if noisy else None,
            batch_size=torch.as_tensor(self.batch[group], **self._like) if minibatch else None,
            noisy=cfg.bound == "noisy",
            Rt=Rt,
            m=m,
            n=n,
            r=r,
            columns=columns,
        )

    def _draws(self, group: np.ndarray, M: int, N: int, R: int) -> nmf_ops.Draws:
        """Each episode's minibatches and noise for this decision, padded to the group.

        Minibatches shorter than the group's widest are filled up with column ``N - 1``, zero
        in every episode of the group (see :meth:`_crop`); its noise is zero too.
        """
        cfg = self.config
        steps, G = cfg.steps_per_action, group.size
        b = int(self.batch[group].max())
        columns = (
            torch.full((G, steps, b), N - 1, dtype=torch.long, device=self.device) if b else None
        )
        noisy = bool((self.noise_std[group] > 0).any())
        cols = b or N
        noise_w = torch.zeros((G, steps, R, M), **self._like) if noisy else None
        noise_h = torch.zeros((G, steps, R, cols), **self._like) if noisy else None
        for j, i in enumerate(group):
            m, n, r, b_i = int(self.m[i]), int(self.n[i]), int(self.r[i]), int(self.batch[i])
            d = nmf_ops.draw(
                self._gens[i],
                steps,
                (m, n),
                r,
                b_i or None,
                float(self.noise_std[i]),
                self.dtype,
                self.device,
            )
            if columns is not None:
                columns[j, :, :b_i] = d.columns
            if noise_w is not None and noise_h is not None and d.noise_w is not None:
                assert d.noise_h is not None  # drawn together
                noise_w[j, :, :r, :m] = d.noise_w
                noise_h[j, :, :r, : d.noise_h.shape[-1]] = d.noise_h
        return nmf_ops.Draws(columns, noise_w, noise_h)

    def _decide(
        self, group: np.ndarray, lr: np.ndarray, clip: np.ndarray, inner: InnerControl | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One decision's inner steps for a group; its loss, capped steps and next bound."""
        cfg = self.config
        Vt, Wt, H = self._crop(group)
        R, M, N = Wt.shape[1], Wt.shape[2], H.shape[2]
        cap = cfg.bound_scale if cfg.bound != "none" and cfg.safeguard else None
        _, n, _ = self._sizes(group)
        batch = torch.as_tensor(self.batch[group], **self._like) if self.batch[group[0]] else None
        with torch.no_grad():
            draws = self._draws(group, M, N, R)
            lr_t = torch.as_tensor(lr, **self._like)
            capped = torch.zeros(group.size, dtype=torch.long, device=self.device)
            for k in range(cfg.steps_per_action):
                Wt, H, min_cap, inner_loss = nmf_ops.inner_step(
                    Vt,
                    Wt,
                    H,
                    lr_t,
                    cap,
                    columns=None if draws.columns is None else draws.columns[:, k],
                    noise_w=None if draws.noise_w is None else draws.noise_w[:, k],
                    noise_h=None if draws.noise_h is None else draws.noise_h[:, k],
                    n=n,
                    b=batch,
                    with_loss=inner is not None,
                )
                if min_cap is not None:
                    capped += min_cap < lr_t
                if inner is not None:
                    # A per-step controller sees every step's loss (one host sync per step);
                    # what it asks after the last step waits for the next decision.
                    wanted = inner(k, group, inner_loss.double().cpu().numpy())
                    if k + 1 < cfg.steps_per_action:
                        lr = np.where(np.isnan(wanted), lr, np.minimum(wanted, clip))
                        lr_t = torch.as_tensor(lr, **self._like)
            loss_t, terms = self._loss_and_bound(group, Vt, Wt, H)
            # One device-to-host transfer per decision: loss, inner caps and the next bound.
            values = torch.stack(
                [
                    loss_t,
                    capped.to(self.dtype),
                    terms.lr_bound,
                    terms.noise_ratio,
                ]
            )
        self._store(group, Wt, H)
        loss, capped_steps, bound, ratio = values.double().cpu().numpy()
        return loss, capped_steps.astype(np.int64), bound, ratio

    def _set_bound(
        self, idx: np.ndarray, loss: np.ndarray, bound: np.ndarray, ratio: np.ndarray
    ) -> None:
        # Non-finite factors make a Gram matrix non-finite, whose eigenvalue counts as inf, so
        # the bound is 0 (or NaN): no separate finiteness check of the factors.
        self.lr_bound[idx], self.noise_ratio[idx] = bound, ratio
        with np.errstate(invalid="ignore"):
            self.healthy[idx] = np.isfinite(loss) & (bound > 0) & (bound < math.inf)


def nmf_observation(
    loss: np.ndarray | float,
    loss0: np.ndarray | float,
    deltas: np.ndarray | list[float],
    fraction: np.ndarray | float,
    lr_bound: np.ndarray | float | None,
    noise_ratio: np.ndarray | float,
    progress: np.ndarray | float,
) -> np.ndarray:
    """The ``lrrl/NMF-v0`` observation from the quantities it summarises (see ``NMFEnv``).

    Shared by the envs (every argument may carry a leading batch dimension; ``deltas`` then
    has shape ``(B, HISTORY)`` and the result ``(B, 8)``) and
    :class:`lrrl.schedulers.PolicyScheduler`, which rebuilds it from a loss history in any
    training loop. ``deltas`` are the last ``HISTORY`` log-loss changes, newest first;
    ``fraction`` the last applied learning rate over the clip it was applied under (NaN
    before the first decision); ``lr_bound`` the current bound (``None`` when the env has
    none).
    """
    loss, loss0 = np.asarray(loss, dtype=np.float64), np.asarray(loss0, dtype=np.float64)
    fraction = np.asarray(fraction, dtype=np.float64)
    deltas = np.asarray(deltas, dtype=np.float64)
    obs = np.empty((*deltas.shape[:-1], OBS_SIZE))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        obs[..., 0] = np.where(loss > 0, np.log(loss / loss0), -OBS_LIMIT)
        obs[..., 1 : 1 + HISTORY] = deltas
        if lr_bound is None:
            obs[..., 4:6] = 0.0
        else:
            lr_bound = np.asarray(lr_bound, dtype=np.float64)
            obs[..., 4] = np.where(fraction > 0, np.log(fraction), 0.0)
            obs[..., 5] = np.where(lr_bound > 0, np.log10(lr_bound), -OBS_LIMIT)
    obs[..., 6] = noise_ratio
    obs[..., 7] = progress
    np.nan_to_num(obs, copy=False, nan=0.0, posinf=OBS_LIMIT, neginf=-OBS_LIMIT)
    return np.clip(obs, -OBS_LIMIT, OBS_LIMIT, out=obs).astype(np.float32)
