"""One seed fixes everything: Python, NumPy, torch and the torch thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, torch_threads: int | None = 1) -> None:
    """Seed every global generator a run touches and pin torch's intra-op threads.

    Environments do not rely on these (they draw from their own seeded generators); this
    covers the agent's network initialisation, SB3's sampling and anything else global.
    One thread per process is usually fastest for the small tensors lrrl works with.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (libraries still draw from the legacy global state)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
