"""The random states a resumed run needs to draw what an uninterrupted one would, saved in
and restored from the checkpoint.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


class RandomState(L.Callback):
    """Keeps the global random states (torch, CUDA, NumPy, Python) in checkpoints and
    restores them on resume, so a resumed run draws the shuffles and augmentations an
    uninterrupted one would. Lightning restores the model, optimizer, scheduler, loops and
    callbacks, not these. Stored as tensors and plain lists: loadable with weights_only."""

    def state_dict(self) -> dict[str, Any]:
        numpy = np.random.get_state(legacy=False)
        return {
            "torch": torch.get_rng_state(),
            # A process that has not used CUDA has the seed's states there, and asking for
            # them would initialise CUDA (in a CPU run on a GPU machine, say).
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].tolist()}},
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        cuda = state["cuda"]
        if cuda and torch.cuda.is_available():
            # The run that saved may have seen more GPUs than this one, or fewer: each device
            # both have gets its state back, any other keeps the seed's.
            visible = torch.cuda.device_count()
            for index, device_state in enumerate(cuda[:visible]):
                torch.cuda.set_rng_state(device_state, index)
            if len(cuda) != visible:
                log.info(
                    "resume: the checkpoint has the CUDA random states of %d devices, this "
                    "process sees %d; restored %d",
                    len(cuda),
                    visible,
                    min(len(cuda), visible),
                )
        numpy = state["numpy"]
        key = np.array(numpy["state"]["key"], dtype=np.uint32)
        np.random.set_state({**numpy, "state": {**numpy["state"], "key": key}})
        random.setstate(state["python"])
