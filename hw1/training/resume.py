"""Continuing a stopped run: ``resume=true hydra.run.dir=RUN`` takes the run's own saved
overrides under the command line's (read before Hydra composes the config), and
``resume_point`` names the checkpoint fit continues from.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hw1.training.checkpoint_io import last_checkpoint
from hw1.training.init_from import check_resumable
from hw1.utils.compat import hydra_args_parser
from hw1.utils.errors import UserFileNotFoundError, reported
from hw1.utils.io import write_atomically
from hw1.utils.runlock import check_unlocked, first_process

log = logging.getLogger(__name__)

# with_run_overrides's log line: made before Hydra composes the config, logged once Hydra
# has set up the run's logging (into train.log)
_taken_note: str | None = None


def run_with_resumed_overrides(hydra_main: Callable[[], object]) -> None:
    """The main() of a command that resumes (hw1.train, hw1.distill): a run directory
    another command writes to is refused at once, and for ``resume=true`` the run's own
    overrides join the command line, before ``hydra_main`` (the ``@hydra.main`` function,
    which stays in the command's module: Hydra names the job, and its log file, after it)
    composes the config. Hydra has no hook that runs earlier."""
    global _taken_note
    with reported():
        refuse_a_locked_run_dir(sys.argv)
    sys.argv, _taken_note = with_run_overrides(sys.argv)
    hydra_main()


def log_taken_overrides() -> None:
    """Logs which saved overrides a resume took, once the run's log is set up."""
    if _taken_note:
        log.info(_taken_note)


def resume_point(cfg: DictConfig, trainer: L.Trainer, model: nn.Module) -> str | None:
    """The checkpoint fit continues from: ``ckpt_path=PATH``, or with ``resume=true`` the
    run directory's ``last.ckpt``; None starts afresh. Either is checked against ``model``
    first (check_resumable)."""
    if cfg.ckpt_path:
        if not Path(cfg.ckpt_path).is_file():
            raise UserFileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint")
        check_resumable(model, cfg.ckpt_path, differs=not_replayed(cfg, trainer))
        return str(cfg.ckpt_path)
    if not cfg.resume:
        return None
    last = last_checkpoint(trainer)
    if not last.is_file():
        raise UserFileNotFoundError(
            f"resume=true: no {last}. Point Hydra at the run to continue: "
            "resume=true hydra.run.dir=outputs/DATE/TIME"
        )
    check_resumable(model, last, key="resume=true", differs=not_replayed(cfg, trainer))
    return str(last)


def not_replayed(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """Why this run, resumed in the middle of an epoch, cannot train the rest of it as the
    uninterrupted run would; None where it can (README, "Stop and resume")."""
    if cfg.data.get("source") == "litdata":
        # LitData's loader restores the sample order, but each worker augments with its
        # own generator, seeded anew when the resumed run starts its workers.
        return "data.source=litdata replays the order of its samples, not their augmentation"
    if trainer.accumulate_grad_batches > 1:
        # Lightning's checkpoints hold no gradients: those of a window cut short are lost.
        return "gradients accumulated over a part of a window are not saved"
    return None


# Keys of a run's saved overrides that a resume never takes: it continues from the run
# directory's last.ckpt, not from the checkpoint the run itself started from.
NOT_RESUMED = {"resume", "ckpt_path"}


# Hydra writes a run's .hydra/ (config.yaml, hydra.yaml, overrides.yaml) as the job starts,
# before hw1 has checked the settings: a resume that then fails would leave the run's record
# overwritten by settings it never ran with. So a resume runs with hydra.output_subdir=null
# and save_run_config writes .hydra/ once the settings have been checked.
RUN_CONFIG_DIR = ".hydra"
DEFER_CONFIG = "hydra.output_subdir=null"
deferred_config = False  # set by with_run_overrides when it asked Hydra not to write .hydra/


def with_run_overrides(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with, for ``resume=true hydra.run.dir=DIR``, the run's own overrides from
    ``DIR/.hydra/overrides.yaml`` put before the command line's, which win: an override of
    a key given on the command line is not taken, and ``~KEY`` of a key that a saved
    ``+KEY`` added removes it (both are left out). Also the log line naming those taken
    (None when none are). Anything Hydra would refuse is left for Hydra to report. A resume
    also defers writing the run's .hydra/ (DEFER_CONFIG)."""
    global deferred_config
    parsed_line = parse_command_line(argv)
    if parsed_line is None:
        return argv, None
    args, given = parsed_line
    parser = OverridesParser.create()
    last = {o.key_or_group: o for o in given}  # the last of a key is the one Hydra applies
    resume, run_dir = last.get("resume"), last.get("hydra.run.dir")
    if args.multirun or resume is None or resume.value() is not True or run_dir is None:
        return argv, None
    deferred_config = "hydra.output_subdir" not in last
    tail = [DEFER_CONFIG] if deferred_config else []
    path = Path(str(run_dir.value())) / RUN_CONFIG_DIR / "overrides.yaml"
    if not path.is_file():
        return [*argv, *tail], None
    saved = [str(o) for o in OmegaConf.load(path)]
    parsed = dict(zip(saved, parser.parse_overrides(saved), strict=True))
    keys = {override_key(o) for o in given} | NOT_RESUMED
    taken = [text for text, o in parsed.items() if override_key(o) not in keys]
    added = {override_key(o) for o in parsed.values() if o.is_add() or o.is_force_add()}
    # ~KEY of a key that only the saved +KEY added: Hydra would find nothing to delete
    dropped = {
        text for text, o in zip(args.overrides, given, strict=True)
        if o.is_delete() and override_key(o) in added
    }  # fmt: skip
    first = argv.index(args.overrides[0], 1)  # Hydra's parser wants the overrides together
    rest = [a for a in argv[first:] if a not in dropped]
    note = None
    if taken:
        note = f"resume=true: took the run's overrides from {path}: {' '.join(taken)}"
    return [*argv[:first], *taken, *rest, *tail], note


def parse_command_line(argv: list[str]) -> tuple[Any, list[Override]] | None:
    """Hydra's reading of ``argv``: (its flags, the overrides); None where Hydra would
    refuse it (Hydra reports that)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Hydra reports a bad command line
            args, _ = hydra_args_parser().parse_known_args(argv[1:])
        return args, OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, OverrideParseException):
        return None


def refuse_a_locked_run_dir(argv: list[str]) -> None:
    """Refuses at once a command line whose ``hydra.run.dir`` another live command writes
    to (hw1.utils.runlock): before Hydra writes that run's .hydra/ and its log."""
    if not first_process():  # a DDP process Lightning started beside the first: its run
        return
    parsed_line = parse_command_line(argv)
    if parsed_line is None or parsed_line[0].multirun:
        return
    run_dir = {o.key_or_group: o for o in parsed_line[1]}.get("hydra.run.dir")
    if run_dir is not None:
        check_unlocked(str(run_dir.value()))


def save_run_config(cfg: DictConfig) -> None:
    """Writes the run's .hydra/ as Hydra would have, once a resume's settings have been
    checked (see DEFER_CONFIG); nothing when Hydra wrote it already."""
    if not deferred_config or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None:
        return
    folder = Path(hydra_cfg.runtime.output_dir) / RUN_CONFIG_DIR
    saved_hydra = OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)})
    saved_hydra.hydra.output_subdir = RUN_CONFIG_DIR
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", saved_hydra),
        ("overrides.yaml", OmegaConf.create(list(hydra_cfg.overrides.task))),
    ):
        write_atomically(folder / name, OmegaConf.to_yaml(node))


def override_key(override: Override) -> str:
    """The config key (or group, with its package) an override sets."""
    package = f"@{override.package}" if override.package else ""
    return f"{override.key_or_group}{package}"
