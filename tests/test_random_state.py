"""RandomState across machines: a checkpoint from a run that saw another number of GPUs
resumes, with CUDA's random-state functions stood in for by fakes (no GPU here)."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch

from hw1.training.random_state import RandomState


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def fake_cuda(monkeypatch, devices: int) -> dict[int, torch.Tensor]:
    """CUDA with ``devices`` visible devices, as far as its random states go; returns the
    state set on each device. Like torch's, setting the state of a device the process does
    not have raises IndexError."""
    states: dict[int, torch.Tensor] = {}

    def set_rng_state(state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= devices:
            raise IndexError("tuple index out of range")
        states[index] = state.clone()

    def set_rng_state_all(new_states) -> None:
        for index, state in enumerate(new_states):
            set_rng_state(state, index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    return states


def saved_on_gpus(count: int) -> dict:
    """RandomState's checkpoint entry from a process that saw ``count`` GPUs (each device's
    state is distinct)."""
    L.seed_everything(5)
    state = RandomState().state_dict()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(count)]
    return state


@pytest.mark.parametrize(("saved", "visible"), [(4, 2), (1, 2), (2, 2)])
def test_resume_restores_the_cuda_state_of_each_device_both_runs_have(monkeypatch, saved, visible):
    state = saved_on_gpus(saved)
    expected = draws()
    L.seed_everything(6)
    restored = fake_cuda(monkeypatch, visible)
    RandomState().load_state_dict(state)
    assert draws() == expected  # torch, NumPy and Python, whatever the GPUs
    assert sorted(restored) == list(range(min(saved, visible)))
    assert all(torch.equal(restored[i], state["cuda"][i]) for i in restored)


def test_a_gpu_checkpoint_resumes_on_a_machine_without_cuda(monkeypatch):
    state = saved_on_gpus(2)
    expected = draws()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    RandomState().load_state_dict(state)
    assert draws() == expected


def test_saving_does_not_initialise_cuda_in_a_process_that_has_not(monkeypatch):
    """A CPU run on a machine with a GPU: CUDA's random states are the seed's until CUDA is
    first used, and asking for them would initialise it."""

    def initialises(*args, **kwargs):
        raise AssertionError("initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", initialises)
    assert RandomState().state_dict()["cuda"] == []
