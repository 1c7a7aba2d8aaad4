"""Hyperparameter search with Optuna, for ``python -m hw1.tune``: the study's storage
(SQLite under the study's folder by default, or any SQLAlchemy URL; heartbeats so that a
killed trial is failed by the next run), each trial an ordinary training run set up as a
Hydra job in ``<dir>/<trial number>/`` and pruned on ``val/acc``, the best settings shown
as a hw1.train line, and Lightning's learning-rate finder."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import sqlalchemy.exc
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import run_job
from hydra.errors import HydraException
from hydra.types import HydraContext
from hydra.utils import instantiate
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from hw1.reporting.studies import save_figure, summarise
from hw1.training.run import data_and_model, train
from hw1.training.search_space import distributions, examples, suggest
from hw1.training.tracking import end_trial
from hw1.utils.compat import HydraCallbacks, optuna_trial_id
from hw1.utils.config import CONF_DIR, CONF_MODULE, compose_config
from hw1.utils.errors import UserRuntimeError, UserValueError, user_error
from hw1.utils.precision import use_tensor_cores
from hw1.utils.runlock import pid_alive

LR_FIND_DIR = "outputs/lr_find/${now:%Y-%m-%d_%H-%M-%S}"


def tune_keys() -> set[str]:
    """The top-level keys and groups of conf/tune.yaml: an override of one of them is the
    search's, any other goes to training (none of them is a training key)."""
    raw = OmegaConf.load(CONF_DIR / "tune.yaml")
    groups = {key for entry in raw.defaults if isinstance(entry, DictConfig) for key in entry}
    return (set(raw) - {"defaults"}) | groups


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The command line's overrides as (the search's, training's)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
    except HydraException as e:
        raise UserValueError(f"hw1.tune: {e}") from None
    keys = tune_keys()
    ours, theirs = [], []
    for text, override in zip(args, parsed, strict=True):
        (ours if override.key_or_group.split(".")[0] in keys else theirs).append(text)
    return ours, theirs


def tune_config(overrides: Sequence[str]) -> tuple[DictConfig, str | None]:
    """conf/tune.yaml composed with the search's overrides, study_name filled in from the
    search space's name; also that name (None without search=NAME)."""
    try:
        cfg = compose_config(overrides, config_name="tune", return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserValueError(f"hw1.tune: {e}") from None
    choice = cfg.hydra.runtime.choices.get("search")
    choice = None if choice in (None, "null") else str(choice)
    with open_dict(cfg):
        del cfg["hydra"]
        if cfg.study_name is None:
            cfg.study_name = choice
    return cfg, choice


def storage_of(cfg: DictConfig, must_exist: bool = False) -> optuna.storages.BaseStorage | str:
    """The study's storage: ``storage=URL``, or the SQLite file in the study's folder."""
    url = cfg.storage
    if url is None:
        path = Path(cfg.dir) / "study.db"
        if must_exist and not path.is_file():
            raise UserValueError(
                f"no study {cfg.study_name!r} here: no {path}. Give its study_name= (and "
                "storage=URL for a study outside outputs/tune/)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    # SQLite: processes sharing the file wait for each other's writes rather than failing.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return open_storage(url, engine)


# A running trial's heartbeat, every HEARTBEAT_S seconds (Optuna's thread, beside the
# training): a trial whose process was killed (SIGKILL, a lost node) stops beating, and the
# next trial of the study, in any process, marks it FAIL once GRACE_S have passed, instead
# of it staying RUNNING forever. Its run directory's last.ckpt can still be resumed by hand.
HEARTBEAT_S = 30
GRACE_S = 120


def open_storage(url: str, engine_kwargs: dict, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage with heartbeats, retried: it creates its tables and stamps their
    version without a lock, so processes starting on one new study at the same moment can
    collide (an IntegrityError or "table already exists"); a second try finds the tables."""
    kwargs = {"engine_kwargs": engine_kwargs, "heartbeat_interval": HEARTBEAT_S}
    kwargs["grace_period"] = GRACE_S
    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url, **kwargs)


class TrialStopped(KeyboardInterrupt):
    """A trial stopped by SIGTERM or Ctrl-C (the training's SystemExit 143 or 130). Optuna
    records a KeyboardInterrupt as the trial's failure and re-raises it; a SystemExit would
    leave the trial RUNNING. search() exits with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Pruning(PyTorchLightningPruningCallback):
    """optuna-integration's callback, which reports the monitored value after each epoch's
    validation and raises TrialPruned when the pruner says so; this one also keeps the
    values, for the trial's score."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.values.append(float(value))
        super().on_validation_end(trainer, pl_module)


def run_as_job(task: Any, overrides: Sequence[str]) -> Any:
    """``task`` on conf/train.yaml composed with ``overrides``, set up as Hydra sets up a run
    (its run directory with .hydra/ configs and log file, the runtime output_dir): a trial's
    directory is continued with ``resume=true hydra.run.dir=DIR`` as any run's. Returns what
    ``task`` returns, raises what it raises."""
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("train", list(overrides), return_hydra_config=True)
        context = HydraContext(
            config_loader=GlobalHydra.instance().config_loader(), callbacks=HydraCallbacks(cfg)
        )
        job = run_job(
            task, cfg, job_dir_key="hydra.run.dir", job_subdir_key=None, hydra_context=context
        )
    return job.return_value  # raises the task's exception


def run_training(overrides: Sequence[str], run_dir: Path, callbacks: Sequence[L.Callback]) -> Any:
    """hw1.train's run of ``overrides`` in ``run_dir``, with ``callbacks`` added."""
    run_overrides = [*overrides, f"hydra.run.dir='{run_dir}'", "hydra.job.name=train"]
    return run_as_job(partial(train, extra_callbacks=callbacks), run_overrides)


def failure_text(error: BaseException) -> str:
    found = user_error(error)
    text = str(found) if found is not None else f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


class Objective:
    """One trial: sample the space, train, score the best monitored value."""

    def __init__(self, cfg: DictConfig, space: dict[str, Any], train_overrides: list[str]):
        self.cfg, self.space, self.train_overrides = cfg, space, train_overrides
        self.run_training = run_training  # the tests put a fake training here

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = [*self.train_overrides, *suggest(trial, self.space)]
        run_dir = Path(self.cfg.dir) / str(trial.number)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("run_dir", str(run_dir))
        # who runs it: the next hw1.tune on this host fails it at once if this process is
        # killed (fail_dead_trials), rather than after the heartbeat's grace period
        trial.set_user_attr("process", {"pid": os.getpid(), "host": socket.gethostname()})
        pruning = Pruning(trial, self.cfg.monitor)
        # The study is one experiment of the tracking loggers, each trial a run in it (the
        # command line's tracking.* overrides, after these, win).
        names = [f"tracking.experiment={self.cfg.study_name}", f"tracking.run=trial_{trial.number}"]
        state = "FAIL"
        try:
            self.run_training([*names, *overrides], run_dir, [pruning])
            if not pruning.values:
                raise UserRuntimeError(
                    f"{self.cfg.monitor} was never logged: no validation ran, or monitor= "
                    "names no metric (val/acc, val/loss)"
                )
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except SystemExit as e:  # SIGTERM or Ctrl-C: last.ckpt saved, or a stopped prediction
            code = e.code if isinstance(e.code, int) else 1
            trial.set_user_attr(
                "fail_reason",
                f"stopped (exit {code}); continue it by hand with python -m hw1.train "
                f"resume=true hydra.run.dir={run_dir}",
            )
            raise TrialStopped(code) from e
        except Exception as e:
            # NaN loss, out of memory, bad settings: recorded, and the search goes on.
            trial.set_user_attr("fail_reason", failure_text(e))
            raise
        finally:
            end_trial(run_dir, trial.number, state)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory trial's leftovers
        best = max if self.cfg.direction == "maximize" else min
        return best(pruning.values)


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Marks FAIL, at once, the study's RUNNING trials whose process on this host is gone
    (a SIGKILL, the out-of-memory killer, a closed terminal): no handler of theirs ran, and
    the heartbeat would leave them RUNNING for GRACE_S more seconds, so that a rerun right
    after the kill still counted them as running. Trials of live processes, or of other
    hosts, are left to their heartbeat. Returns the numbers of those failed."""
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        process = trial.user_attrs.get("process") or {}
        if process.get("host") != host or pid_alive(int(process.get("pid", 0))):
            continue
        run_dir = trial.user_attrs.get("run_dir", "?")
        reason = (
            f"its process (pid {process['pid']}) was killed; continue it by hand with "
            f"python -m hw1.train resume=true hydra.run.dir={run_dir} if it saved last.ckpt"
        )
        trial_id = optuna_trial_id(trial)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile: its process was another one with that pid
        failed.append(trial.number)
        print(f"trial {trial.number} fail: {reason}", flush=True)
    return failed


def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial."""
    params = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        outcome = (
            f"pruned after epoch {trial.last_step + 1}" if trial.last_step is not None else "pruned"
        )
    else:
        outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get('fail_reason', '')}"
    print(f"trial {trial.number} {outcome} | {params}", flush=True)


def check_settings(
    cfg: DictConfig, space: dict[str, Any], overrides: list[str], where: str
) -> None:
    """Compose a trial's config once before any trains, so that a key missing from the
    config, or a search key also set on the command line, stops the search at once."""
    given = {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}
    if both := sorted(given & set(space)):
        raise UserValueError(
            f"{', '.join(both)}: searched ({where}) and set on the command line; drop one"
        )
    try:
        train_cfg = compose_config([*overrides, *examples(space)])
    except (HydraException, OmegaConfBaseException) as e:
        raise UserValueError(f"{where} with the command line's overrides: {e}") from None
    if "ddp" in str(train_cfg.trainer.strategy):
        raise UserValueError(
            "hw1.tune trains its trials one after another in its own process, on one device, "
            "not with trainer=ddp: run one hw1.tune per GPU on a shared storage= instead "
            "(CUDA_VISIBLE_DEVICES=0 python -m hw1.tune ... & CUDA_VISIBLE_DEVICES=1 ...)"
        )


def search(cfg: DictConfig, choice: str | None, train_overrides: list[str]) -> None:
    if cfg.get("search") is None or cfg.study_name is None:
        names = sorted(p.stem for p in (CONF_DIR / "search").glob("*.yaml"))
        raise UserValueError(
            f"hw1.tune: give search=NAME, one of {', '.join(names)} (conf/search/)"
        )
    where = f"search={choice}" if choice else "search"
    space = distributions(cfg.search.get("params"), where)
    check_settings(cfg, space, train_overrides, where)
    storage = storage_of(cfg)
    study = optuna.create_study(
        study_name=cfg.study_name,
        storage=storage,
        load_if_exists=True,  # the same command again continues the study
        direction=cfg.direction,
        sampler=instantiate(cfg.sampler),
        pruner=instantiate(cfg.pruner),
    )
    study.set_user_attr("monitor", cfg.monitor)
    fail_dead_trials(study, storage)
    print(f"study {cfg.study_name}: {len(study.trials)} trials so far; running {cfg.n_trials} more")
    try:
        study.optimize(
            Objective(cfg, space, train_overrides),
            n_trials=cfg.n_trials,
            timeout=cfg.timeout,
            catch=(Exception,),  # a failed trial is recorded with its reason; the next one runs
            callbacks=[progress],
            gc_after_trial=True,
        )
    except TrialStopped as stopped:  # recorded as FAIL, with how to continue it
        raise SystemExit(stopped.code) from None
    summarise(study, Path(cfg.dir))


def show(cfg: DictConfig, train_overrides: list[str]) -> None:
    if train_overrides or cfg.study_name is None:
        raise UserValueError(
            "hw1.tune show takes study_name=NAME [storage=URL] only"
            + (f", not {' '.join(train_overrides)}" if train_overrides else "")
        )
    storage = storage_of(cfg, must_exist=True)
    try:
        study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise UserValueError(
            f"no study {cfg.study_name!r} in storage={cfg.storage}; it holds {names or 'none'}"
        ) from None
    summarise(study, Path(cfg.dir))


def find_lr(cfg: DictConfig, train_overrides: list[str]) -> None:
    """Lightning's learning-rate finder on the configured run: its suggestion, and its plot
    in the run directory (outputs/lr_find/DATE_TIME unless hydra.run.dir= says)."""

    def task(train_cfg: DictConfig) -> None:
        L.seed_everything(train_cfg.seed, workers=True)
        use_tensor_cores()
        datamodule, model = data_and_model(train_cfg)
        # No callbacks: the finder raises the rate until the loss diverges, which would stop
        # a run (StopOnNonFiniteLoss); no logger or checkpoints, nothing of a run to keep.
        # Nor validation: the finder follows the training loss.
        trainer = instantiate(
            train_cfg.trainer,
            callbacks=[],
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        finder = Tuner(trainer).lr_find(
            model, datamodule=datamodule, update_attr=False, **cfg.lr_find
        )
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        save_figure(finder.plot(suggest=True), run_dir / "lr_find.png")
        lr = finder.suggestion()
        print(f"suggested optim.lr={lr:.3g}" if lr else "no suggestion: too few steps to tell")
        print(f"plot: {run_dir / 'lr_find.png'}")

    given = {o.key_or_group for o in OverridesParser.create().parse_overrides(train_overrides)}
    run_dir = [] if "hydra.run.dir" in given else [f"hydra.run.dir={LR_FIND_DIR}"]
    run_as_job(task, [*train_overrides, *run_dir, "hydra.job.name=lr_find"])
