"""Continuing a stopped run: ``resume=true hydra.run.dir=RUN`` takes the run's own saved
overrides under the command line's (read before Hydra composes the config), and
``resume_point`` names the checkpoint fit continues from.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import lightning as L
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from hw1.training.checkpoint_io import last_checkpoint
from hw1.utils.compat import hydra_args_parser
from hw1.utils.errors import UserFileNotFoundError


def resume_point(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """The checkpoint fit continues from: ``ckpt_path=PATH``, or with ``resume=true`` the
    run directory's ``last.ckpt``; None starts afresh."""
    if cfg.ckpt_path:
        if not Path(cfg.ckpt_path).is_file():
            raise UserFileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint")
        return str(cfg.ckpt_path)
    if not cfg.resume:
        return None
    last = last_checkpoint(trainer)
    if not last.is_file():
        raise UserFileNotFoundError(
            f"resume=true: no {last}. Point Hydra at the run to continue: "
            "resume=true hydra.run.dir=outputs/DATE/TIME"
        )
    return str(last)


# Keys of a run's saved overrides that a resume never takes: it continues from the run
# directory's last.ckpt, not from the checkpoint the run itself started from.
NOT_RESUMED = {"resume", "ckpt_path"}


def with_run_overrides(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with, for ``resume=true hydra.run.dir=DIR``, the run's own overrides from
    ``DIR/.hydra/overrides.yaml`` put before the command line's, which win: an override of
    a key given on the command line is not taken. Also the log line naming those taken
    (None when none are). Anything Hydra would refuse is left for Hydra to report."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Hydra reports a bad command line
            args, _ = hydra_args_parser().parse_known_args(argv[1:])
        parser = OverridesParser.create()
        given = parser.parse_overrides(args.overrides)
    except (SystemExit, OverrideParseException):
        return argv, None
    last = {o.key_or_group: o for o in given}  # the last of a key is the one Hydra applies
    resume, run_dir = last.get("resume"), last.get("hydra.run.dir")
    if args.multirun or resume is None or resume.value() is not True or run_dir is None:
        return argv, None
    path = Path(str(run_dir.value())) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return argv, None
    saved = [str(o) for o in OmegaConf.load(path)]
    keys = {override_key(o) for o in given} | NOT_RESUMED
    taken = [
        text
        for text, o in zip(saved, parser.parse_overrides(saved), strict=True)
        if override_key(o) not in keys
    ]
    if not taken:
        return argv, None
    first = argv.index(args.overrides[0], 1)  # Hydra's parser wants the overrides together
    note = f"resume=true: took the run's overrides from {path}: {' '.join(taken)}"
    return [*argv[:first], *taken, *argv[first:]], note


def override_key(override: Override) -> str:
    """The config key (or group, with its package) an override sets."""
    package = f"@{override.package}" if override.package else ""
    return f"{override.key_or_group}{package}"
