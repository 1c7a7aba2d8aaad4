"""hw1: fine-tune torchvision ResNet/ResNeXt backbones on a folder of images."""

from hw1.utils.signals import stop_cleanly_while_starting

stop_cleanly_while_starting()  # first: a Ctrl-C while the rest imports is one line

from omegaconf import OmegaConf  # noqa: E402

from hw1.utils.precision import auto_precision, on_gpu  # noqa: E402
from hw1.utils.runlock import fresh_run_dir  # noqa: E402
from hw1.utils.workers import default_workers  # noqa: E402

# The competition's rule: a model of fewer than 100 M parameters (train's summary and
# hw1.report flag any over it).
PARAM_LIMIT = 100_000_000

# Registered on import so that conf/ composes the same way from hw1.train, the tests and
# Hydra's compose API.
OmegaConf.register_new_resolver(
    "hw1.patience", lambda epochs: max(1, int(epochs) // 50), replace=True
)
OmegaConf.register_new_resolver(
    "hw1.mode", lambda monitor: "max" if "acc" in str(monitor) else "min", replace=True
)
OmegaConf.register_new_resolver("hw1.precision", auto_precision, replace=True)
OmegaConf.register_new_resolver("hw1.on_gpu", on_gpu, replace=True)
OmegaConf.register_new_resolver("hw1.workers", default_workers, replace=True)
# A sweep job's directory: its number, then the report's ID when a recipe sets one.
OmegaConf.register_new_resolver(
    "hw1.job_dir", lambda num, id: f"{num}_{id}" if id else str(num), replace=True
)

# A default run directory (outputs/DATE/TIME) of its own: never another run's (runlock).
# Cached: the run directory is read several times (Hydra, Lightning's DDP launcher), and
# must be the same one each time.
OmegaConf.register_new_resolver("hw1.fresh_dir", fresh_run_dir, replace=True, use_cache=True)


def __getattr__(name: str):
    """``hw1.load_classifier``, imported on first use: ``import hw1`` stays light, and an
    exported folder loads without the training stack."""
    if name == "load_classifier":
        from hw1.inference.api import load_classifier

        return load_classifier
    raise AttributeError(f"module 'hw1' has no attribute {name!r}")
