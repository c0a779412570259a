"""Checkpoints of a training run, resuming from them, and the lock that guards a run dir.

A run with ``agent.checkpoint_every > 0`` writes ``RUN_DIR/checkpoint/`` at the start of the
first rollout after every ``checkpoint_every`` env steps (a rollout boundary: the policy has
just been updated and no half-collected rollout is lost) and once more when training ends:

=========================== ===========================================================
file                        holds
=========================== ===========================================================
``model-<step>.zip``        the SB3 model: policy weights and optimizer, ``num_timesteps``
``rng-<step>.pkl``          Python, NumPy and torch global RNG states, each env's RNG
``replay_buffer-<step>.pkl`` the replay buffer of off-policy agents (SAC)
``manifest.json``           written last: the step, the file names and their SHA-256,
                            the training counters (episodes, divergences, wall time)
=========================== ===========================================================

Every file is written to a temporary file in the same folder, fsynced and moved into place
with ``os.replace``; the manifest goes last and names files by step, so a kill at any moment
leaves either the previous checkpoint or the new one, never a mix. Files the manifest does not
name are deleted after it is written.

Resuming rebuilds the envs, loads the model, restores every RNG and continues with
``reset_num_timesteps=False`` until ``agent.total_timesteps``. The episodes that were running
at the checkpoint start again from a reset (with the envs' restored generators), so a resumed
run is a valid run of the same budget but not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import pickle
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from lrrl.cli import ConfigError

FOLDER = "checkpoint"
MANIFEST = "manifest.json"
FORMAT = "lrrl.checkpoint/v1"
LOCK = ".lock"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``run_dir/.lock`` (released even on SIGKILL).

    A second process that tries to write into the same run dir fails at once with a
    :class:`ConfigError` instead of interleaving its files with the first one's.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"run dir {str(run_dir)!r} is in use by another process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_fresh(run_dir: Path) -> None:
    """Refuse to start a new run in a dir that holds a run (finished, resumable or running)."""
    if is_finished(run_dir) or has_checkpoint(run_dir):
        raise ConfigError(
            f"run dir {str(run_dir)!r} already holds a run: "
            f"continue it with resume={run_dir} or choose another hydra.run.dir"
        )
    if (run_dir / LOCK).is_file():
        with lock_run_dir(run_dir):  # fails at once while another process holds it
            pass


def is_finished(run_dir: Path) -> bool:
    """Whether a run dir holds a finished run (``metrics.json`` is written last)."""
    return (run_dir / "metrics.json").is_file()


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / FOLDER / MANIFEST).is_file()


@dataclass
class TrainState:
    """Training counters carried across a resume."""

    timesteps: int = 0
    episodes: int = 0
    divergences: int = 0
    wall_time_s: float = 0.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rng_state(venv: Any) -> dict[str, Any]:
    """Every generator a training process draws from: global ones and each env's own."""
    try:
        envs = venv.get_attr("np_random")
    except AttributeError:  # an env without a numpy generator
        envs = None
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002  (SB3 still draws from the legacy state)
        "torch": torch.get_rng_state(),
        "envs": envs,
    }


def restore_global_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])


def save_checkpoint(folder: Path, model: Any, state: TrainState) -> Path:
    """Write one checkpoint of ``model`` (and its env's RNGs) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    step = int(model.num_timesteps)
    blobs: dict[str, tuple[str, bytes]] = {}
    buffer = io.BytesIO()
    model.save(buffer)
    blobs["model"] = (f"model-{step:012d}.zip", buffer.getvalue())
    blobs["rng"] = (f"rng-{step:012d}.pkl", pickle.dumps(rng_state(model.get_env())))
    if getattr(model, "replay_buffer", None) is not None:
        buffer = io.BytesIO()
        pickle.dump(model.replay_buffer, buffer)
        blobs["replay_buffer"] = (f"replay_buffer-{step:012d}.pkl", buffer.getvalue())
    for name, data in blobs.values():
        atomic_write_bytes(folder / name, data)
    manifest = {
        "format": FORMAT,
        "timesteps": step,
        "files": {key: name for key, (name, _) in blobs.items()},
        "sha256": {key: _sha256(data) for key, (_, data) in blobs.items()},
        "episodes": state.episodes,
        "divergences": state.divergences,
        "wall_time_s": state.wall_time_s,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write_bytes(folder / MANIFEST, text.encode())
    keep = {MANIFEST, *(name for name, _ in blobs.values())}
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)
    return folder / MANIFEST


def read_manifest(folder: Path) -> dict[str, Any]:
    """The checked manifest of the checkpoint in ``folder``; any problem is a ConfigError."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise ConfigError(f"{folder}: no checkpoint to resume from (no {MANIFEST})") from None
    except ValueError as err:
        raise ConfigError(f"{path}: corrupt checkpoint manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} checkpoint manifest")
    for key, name in manifest["files"].items():
        data = (folder / name).read_bytes() if (folder / name).is_file() else None
        if data is None or _sha256(data) != manifest["sha256"][key]:
            raise ConfigError(f"{folder / name}: missing or corrupt checkpoint file")
    return manifest


def load_checkpoint(folder: Path, algo_cls: Any, venv: Any, device: str) -> tuple[Any, TrainState]:
    """Rebuild the model of the checkpoint in ``folder`` on ``venv`` and restore every RNG.

    ``venv`` must be freshly built the way the run built it (same env config, seed and count).
    Returns the model, ready for ``learn(..., reset_num_timesteps=False)``, and the counters.
    """
    manifest = read_manifest(folder)
    files = manifest["files"]
    model = algo_cls.load(folder / files["model"], env=venv, device=device)
    if "replay_buffer" in files:
        model.replay_buffer = pickle.loads((folder / files["replay_buffer"]).read_bytes())
    rng = pickle.loads((folder / files["rng"]).read_bytes())
    # Consume the envs' pending reset seeds, then put back their generators: the reset below
    # (the first observation of the resumed run) then draws from the restored streams.
    venv.reset()
    if rng["envs"] is not None:
        for i, generator in enumerate(rng["envs"]):
            venv.set_attr("np_random", generator, indices=[i])
    model._last_obs = venv.reset()
    model._last_episode_starts = np.ones((venv.num_envs,), dtype=bool)
    restore_global_rng(rng)
    state = TrainState(
        int(manifest["timesteps"]),
        int(manifest["episodes"]),
        int(manifest["divergences"]),
        float(manifest["wall_time_s"]),
    )
    return model, state


class CheckpointCallback(BaseCallback):
    """Saves a checkpoint at the first rollout start after every ``every`` env steps."""

    def __init__(self, folder: Path, every: int, counters: Any, wall_time_s: float = 0.0) -> None:
        super().__init__()
        self.folder, self.every, self.counters = folder, every, counters
        self._wall_before = wall_time_s
        self._start = time.perf_counter()
        self._last = 0

    def _init_callback(self) -> None:
        self._last = self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.every > 0 and self.model.num_timesteps - self._last >= self.every:
            self.save()

    def _on_step(self) -> bool:
        return True

    def state(self) -> TrainState:
        return TrainState(
            int(self.model.num_timesteps),
            int(self.counters.episodes),
            int(self.counters.divergences),
            self._wall_before + time.perf_counter() - self._start,
        )

    def save(self) -> Path:
        self._last = self.model.num_timesteps
        return save_checkpoint(self.folder, self.model, self.state())
