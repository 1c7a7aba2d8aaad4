"""Private APIs of hw1's dependencies, in one place. Each has no public equivalent (the
comment says why hw1 needs it); tests/test_compat.py fails by name when an upgrade of
Lightning, Hydra or torchvision removes or changes one, instead of a run failing later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The fast pipeline's batched colour jitter must equal torchvision's ColorJitter to the
# level (transforms/colour_jitter.py): its hue step goes through these two conversions,
# which torchvision keeps private.
from torchvision.transforms.v2.functional._color import _hsv_to_rgb as hsv_to_rgb
from torchvision.transforms.v2.functional._color import _rgb_to_hsv as rgb_to_hsv

if TYPE_CHECKING:
    import lightning as L

# The Hydra ones are imported on first use (``__getattr__`` below): the fast pipeline's
# colour jitter imports this module, and an exported model predicts without Hydra.
HYDRA_PRIVATE = {
    # hw1.tune runs each trial as a Hydra job in-process (run_job needs a HydraContext,
    # which needs the Callbacks object); Hydra exposes no public constructor for it.
    "HydraCallbacks": ("hydra._internal.callbacks", "Callbacks"),
    # hw1.train's resume=true reads the command line before Hydra composes it, to add the
    # run's own overrides (training/resume.py); Hydra's argument parser is the only one that
    # knows every flag Hydra accepts (-m, --config-dir, --cfg, ...), and Hydra has no
    # earlier hook.
    "hydra_args_parser": ("hydra._internal.utils", "get_args_parser"),
}


def __getattr__(name: str) -> Any:
    if name in HYDRA_PRIVATE:
        import importlib

        module, attr = HYDRA_PRIVATE[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "hsv_to_rgb",
    "optuna_trial_id",
    "rgb_to_hsv",
    "stop_fit",
    "tensorboard_file_writer",
    *HYDRA_PRIVATE,
]


def stop_fit(trainer: L.Trainer, stop: bool) -> None:
    """While set, Lightning's fit stops (SIGTERMException) at its next stopping point: the
    end of a training batch, of a validation batch, of an epoch. It is what Lightning's
    own SIGTERM handler sets; the public ``trainer.should_stop`` waits for the end of the
    epoch's training part and does not stop a validation loop."""
    trainer._signal_connector.received_sigterm = stop


def tensorboard_file_writer(writer: Any) -> Any:
    """The FileWriter under torch's SummaryWriter, which takes a ready-made Summary proto:
    TensorBoard's HPARAMS entry is written as three such summaries (training/hparams.py
    edits them before writing), and SummaryWriter's public add_hparams writes them into a
    new sub-folder instead of the run's own. Lightning's log_hyperparams uses it too."""
    return writer._get_file_writer()


def optuna_trial_id(trial: Any) -> int:
    """A FrozenTrial's storage id, which the storage's public methods take
    (``set_trial_state_values``): hw1.tune fails the trials of killed processes through
    them, as Optuna's own ``fail_stale_trials`` does. FrozenTrial exposes the id only as
    this attribute."""
    return trial._trial_id
