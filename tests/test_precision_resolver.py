"""trainer.precision's default (the ``hw1.precision`` resolver) on machines this one can
only pretend to be: a GPU is faked by monkeypatching, and every CUDA call that would
initialise CUDA fails the test."""

from __future__ import annotations

import pytest
import torch

from hw1.utils import precision as resolver
from hw1.utils.config import compose_config

# Each of these initialises CUDA in the calling process, after which it can no longer
# fork workers that use CUDA (Lightning refuses ddp_fork and ddp_notebook).
INITIALISING = [
    "init", "_lazy_init", "current_device", "is_bf16_supported", "get_device_capability",
    "get_device_properties", "get_device_name", "get_rng_state_all",
]  # fmt: skip


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine with one CUDA GPU of the compute capability the test sets (None: NVML
    cannot tell)."""

    def initialises(*args, **kwargs):
        raise AssertionError("initialised CUDA while the config was resolved")

    for name in INITIALISING:
        monkeypatch.setattr(torch.cuda, name, initialises)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def capability(value: tuple[int, int] | None) -> None:
        monkeypatch.setattr(resolver, "_nvml_compute_capability", lambda: value, raising=False)

    capability((9, 0))
    return capability


def precision(*overrides: str) -> str:
    return compose_config(list(overrides)).trainer.precision


def test_a_cpu_run_on_a_gpu_machine_gets_full_precision(gpu_machine):
    assert precision("trainer.accelerator=cpu") == "32-true"
    assert precision("trainer=cpu") == "32-true"
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"), ((7, 5), "16-mixed"), (None, "16-mixed")],
)
def test_a_gpu_run_gets_the_mixed_precision_its_gpu_has(gpu_machine, capability, expected):
    gpu_machine(capability)
    for accelerator in ("auto", "gpu", "cuda"):
        assert precision(f"trainer.accelerator={accelerator}") == expected
    assert not torch.cuda.is_initialized()


def test_without_a_gpu_auto_is_full_precision(gpu_machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert precision() == "32-true"
    assert precision("trainer.accelerator=mps") == "32-true"


class FakeNVML:
    """libnvidia-ml.so.1 for a machine whose GPUs have the given compute capabilities."""

    def __init__(self, capabilities: list[tuple[int, int]]) -> None:
        self.capabilities = capabilities
        self.shut_down = False

    def nvmlInit_v2(self) -> int:
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle) -> int:
        if index.value >= len(self.capabilities):
            return 2  # NVML_ERROR_INVALID_ARGUMENT
        handle._obj.value = index.value + 1
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor) -> int:
        major._obj.value, minor._obj.value = self.capabilities[handle.value - 1]
        return 0

    def nvmlShutdown(self) -> int:
        self.shut_down = True
        return 0


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, (7, 0)), ("1,0", (9, 0)), ("2", None), ("GPU-8e6b1d2c", None), ("MIG-1", None)],
)
def test_nvml_reads_the_first_visible_device(monkeypatch, visible, expected):
    nvml = FakeNVML([(7, 0), (9, 0)])
    monkeypatch.setattr(resolver.ctypes, "CDLL", lambda name: nvml)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert resolver._nvml_compute_capability() == expected
    assert nvml.shut_down or visible.startswith(("GPU-", "MIG-"))


def test_without_nvml_the_capability_is_unknown(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(resolver.ctypes, "CDLL", missing)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolver._nvml_compute_capability() is None


def test_a_one_device_command_takes_the_trainer_keys():
    """hw1.average and hw1.predict inputs= run without a Trainer, on the device the
    Trainer's keys name (inference_device)."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolver.inference_device("auto", 1).type == expected
    assert resolver.inference_device("cpu", [0]) == torch.device("cpu")
    assert [resolver._one_index(d) for d in (1, "auto", [3], "2,")] == [0, 0, 3, 2]
    for many in (2, [0, 1], "0,1"):
        with pytest.raises(resolver.UserValueError, match="runs on one device"):
            resolver._one_index(many)
    with pytest.raises(resolver.UserValueError, match="trainer.accelerator=tpu: use auto"):
        resolver.inference_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU")
def test_asking_for_a_gpu_on_a_machine_without_one_says_so():
    with pytest.raises(resolver.UserValueError, match="no CUDA GPU is visible"):
        resolver.inference_device("gpu", [0])
