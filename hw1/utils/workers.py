"""data.num_workers' default: the DataLoader workers the CPUs this process may use allow."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# More workers than this cost memory and start-up time more than they add speed: at some
# hundreds of images/s each, eight feed a GPU training a ResNet-50.
MAX_WORKERS = 8


def default_workers(devices: Any = 1) -> int:
    """``data.num_workers``' default: a DataLoader worker per CPU this process may use, less
    one for the process itself, at most ``MAX_WORKERS``.

    The CPUs are the process's affinity (what taskset, a container or SLURM leaves it), and
    under SLURM at most its ``--cpus-per-task``, which is each task's own. Otherwise the
    ``devices`` processes of a DDP run on one node share them."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit():
        cpus = min(cpus or 1, int(slurm))
    else:
        cpus = (cpus or 1) // _processes_per_node(devices)
    return max(0, min(MAX_WORKERS, cpus - 1))


def _processes_per_node(devices: Any) -> int:
    """The processes a Trainer of ``trainer.devices=devices`` runs on one node: a count, a
    list of device indices, or auto / -1 (every visible GPU, else one)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return max(1, len(devices))
    if isinstance(devices, str) and "," in devices:  # "0,1,3"
        return len([d for d in devices.split(",") if d.strip()])
    from lightning.fabric.accelerators.cuda import num_cuda_devices  # NVML: CUDA stays off

    return max(1, num_cuda_devices())
