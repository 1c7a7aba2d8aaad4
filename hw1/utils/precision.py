"""The defaults that follow trainer.accelerator, trainer.precision and model.channels_last,
decided without initialising CUDA; the one device of a command that runs without a Trainer."""

import ctypes
import logging
import os
from collections.abc import Sequence

import torch

from hw1.utils.errors import UserValueError

log = logging.getLogger(__name__)


def _nvml_compute_capability() -> tuple[int, int] | None:
    """(major, minor) compute capability of the first visible CUDA device, from NVML, the
    driver's management library; None when NVML cannot tell (no library, a device named
    by UUID or MIG in CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    if not visible.isdigit():
        return None
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(int(visible)), ctypes.byref(handle)):
            return None
        major, minor = ctypes.c_int(), ctypes.c_int()
        if nvml.nvmlDeviceGetCudaComputeCapability(
            handle, ctypes.byref(major), ctypes.byref(minor)
        ):
            return None
        return major.value, minor.value
    finally:
        nvml.nvmlShutdown()


def auto_precision(accelerator: str = "auto") -> str:
    """trainer.precision for trainer.accelerator: bf16-mixed on a CUDA GPU that has bfloat16
    (compute capability 8.0 on), 16-mixed on older ones, 32-true on anything else.

    It is resolved in the process that launches DDP, before the Trainer exists: CUDA must
    not be initialised there (a process that has can no longer fork workers that use it,
    and Lightning refuses ddp_fork and ddp_notebook), so the GPU is looked up through NVML,
    as Lightning itself counts devices, never through torch.cuda's device queries."""
    if str(accelerator) not in ("auto", "gpu", "cuda") or torch.cuda.device_count() == 0:
        return "32-true"
    if torch.version.hip:  # every ROCm GPU torch supports has bfloat16
        return "bf16-mixed"
    capability = _nvml_compute_capability()
    if capability is None:
        log.warning(
            "trainer.precision: NVML cannot tell whether this GPU has bfloat16; using "
            "16-mixed. Set trainer.precision=bf16-mixed on an Ampere or later GPU."
        )
        return "16-mixed"
    return "bf16-mixed" if capability >= (8, 0) else "16-mixed"


def on_gpu(accelerator: str = "auto") -> bool:
    """model.channels_last's default: true for a run on a GPU (trainer.accelerator gpu or
    cuda, or auto on a machine with one), where NHWC is the layout tensor cores convolve
    in; false on the CPU."""
    if str(accelerator) in ("gpu", "cuda"):
        return True
    return str(accelerator) == "auto" and torch.cuda.device_count() > 0


def use_tensor_cores() -> None:
    """float32 matrix products on TF32 tensor cores where the GPU has them (Ampere and
    newer): several times faster, and Lightning warns on such a GPU until it is set. Set
    here only, for every command that trains (hw1.train, hw1.distill, hw1.tune)."""
    torch.set_float32_matmul_precision("high")


def inference_device(accelerator: str = "auto", devices: object = 1) -> torch.device:
    """The one device of a command that runs its model outside a Trainer (hw1.average's
    BatchNorm pass, hw1.predict's ``inputs=``), from the keys every command takes:
    ``trainer.accelerator`` (auto: CUDA when there is one, else the CPU; cpu; gpu or cuda;
    mps) and ``trainer.devices`` (1, or ``[N]`` for the GPU numbered N)."""
    accelerator = str(accelerator).lower()
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise UserValueError(f"trainer.accelerator={accelerator}: use auto, cpu, gpu or mps")
    index = _one_index(devices)
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "mps":
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UserValueError(
            f"trainer.accelerator={accelerator}, but no CUDA GPU is visible: "
            "trainer.accelerator=cpu (or auto)"
        )
    return torch.device("cuda", index)


def _one_index(devices: object) -> int:
    """The GPU index ``trainer.devices`` names for a one-device command: 1 or auto is the
    first; ``[N]`` (or ``"N,"``) is GPU N; more than one is refused."""
    if isinstance(devices, str):
        parts = [p for p in devices.split(",") if p.strip()]
        if devices.strip() in ("auto", "1", "-1"):
            return 0
        if "," in devices and len(parts) == 1 and parts[0].strip().isdigit():
            return int(parts[0])
    elif isinstance(devices, int) and devices in (1, -1):
        return 0
    elif isinstance(devices, Sequence) and len(devices) == 1 and isinstance(devices[0], int):
        return devices[0]
    raise UserValueError(
        f"trainer.devices={devices}: this command runs on one device: trainer.devices=1, or "
        "trainer.devices=[N] for the GPU numbered N"
    )
