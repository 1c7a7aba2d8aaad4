"""python -m hw1.tune: Optuna studies whose trials are hw1.train runs, pruned, resumable and
shared between processes; the best trial's training command; the LR finder."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy.exc
import torch
from conftest import TINY, make_hw1_folder
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

import hw1.training.tuning
from hw1.training.search_space import distributions
from hw1.training.tuning import (
    Objective,
    TrialStopped,
    check_settings,
    open_storage,
    split_overrides,
    tune_config,
    tune_keys,
)
from hw1.tune import main
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError


def tiny(*searched: str) -> list[str]:
    """conftest's tiny run, one training batch and one validation batch for one epoch,
    without the keys a search sets."""
    kept = [o for o in TINY if o.split("=")[0] not in searched]
    return [
        *kept,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "tta=none",
    ]


def sqlite(folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}"


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> tuple[Path, str, list[str]]:
    """A 3-trial study of search=demo, run in its own folder: (that folder, the printed
    output, the training overrides given)."""
    base = tmp_path_factory.mktemp("tune")
    root = base / "data"
    make_hw1_folder(root, ["a", "b", "c"], train=4, val=2, test=1, size=32)
    overrides = [f"data.root={root}", *tiny("optim.lr", "head.dropout")]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        out = run_main(["search=demo", "n_trials=3", *overrides])
    return base, out, overrides


def run_main(args: list[str]) -> str:
    """hw1.tune's printed output (stdout)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(args)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_study_on_sqlite_writes_a_run_directory_per_complete_trial(study_run):
    base, out, _ = study_run
    folder = base / "outputs" / "tune" / "demo"
    study = optuna.load_study(study_name="demo", storage=sqlite(folder))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:
        run_dir = folder / str(trial.number)
        assert (run_dir / "metrics.json").is_file()
        assert (run_dir / "checkpoints" / "best.ckpt").is_file()
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
        assert trial.user_attrs["run_dir"] == str(Path("outputs/tune/demo") / str(trial.number))
    assert out.count("\ntrial ") + out.startswith("trial ") == 3  # a line per trial
    rows = (folder / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,value,head.dropout,optim.lr,optim.weight_decay")
    assert len(rows) == 4
    assert (folder / "history.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_printed_best_settings_compose_the_best_trials_config(study_run):
    base, out, _ = study_run
    line = next(line for line in out.splitlines() if "its settings:" in line)
    args = shlex.split(line.split("its settings:", 1)[1])
    assert args[:3] == ["python", "-m", "hw1.train"]
    folder = base / "outputs" / "tune" / "demo"
    best = optuna.load_study(study_name="demo", storage=sqlite(folder)).best_trial
    saved = OmegaConf.load(folder / str(best.number) / ".hydra" / "config.yaml")
    composed = compose_config(args[3:])
    # Every setting but the tracked run's name, which hw1.tune gives each trial (trial_N
    # of the study's experiment) and a new run names after its own directory.
    composed, saved = OmegaConf.to_container(composed), OmegaConf.to_container(saved)
    assert saved.pop("tracking") == {"experiment": "demo", "run": f"trial_{best.number}"}
    composed.pop("tracking")
    assert composed == saved
    assert composed["optim"]["lr"] == best.params["optim.lr"]
    assert composed["head"]["dropout"] == best.params["head.dropout"]


@pytest.mark.slow
def test_running_the_same_command_again_adds_trials_to_the_study(study_run):
    base, _, overrides = study_run
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        out = run_main(["search=demo", "n_trials=1", *overrides])
    folder = base / "outputs" / "tune" / "demo"
    study = optuna.load_study(study_name="demo", storage=sqlite(folder))
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert (folder / "3" / "metrics.json").is_file()
    assert "study demo: 3 trials so far; running 1 more" in out


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_as_failed_and_the_study_completes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b", "c"], train=4, val=2, test=1, size=32)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "outputs" / "tune" / "lr"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="lr", storage=sqlite(folder), direction="maximize")
    study.enqueue_trial({"optim.lr": float("inf")})  # NaN weights after the first step
    study.enqueue_trial({"optim.lr": 3e-3})
    space = "+search.params.optim.lr={type:categorical,choices:[inf,3e-3]}"
    out = run_main(
        [space, "study_name=lr", "n_trials=2", f"data.root={root}", *tiny("optim.lr")]
        + ["trainer.limit_train_batches=2", "data.batch_size=4"]
    )
    trials = optuna.load_study(study_name="lr", storage=sqlite(folder)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "training loss is" in trials[0].user_attrs["fail_reason"]
    assert "trial 0 fail: training loss is" in out
    assert "best val/acc" in out


def fake_training(epochs: int):
    """A training whose val/acc is the trial's sampled ``x`` at every epoch, reported
    through the pruning callback as Lightning calls it; records each run's epochs."""
    runs: list[int] = []

    def run(overrides, run_dir, callbacks):
        x = float(next(o for o in overrides if o.startswith("x=")).split("=")[1])
        for epoch in range(epochs):
            trainer = SimpleNamespace(
                sanity_checking=False, callback_metrics={"val/acc": torch.tensor(x)}
            )
            runs.append(epoch)
            for callback in callbacks:
                callback.on_validation_end(trainer, SimpleNamespace(current_epoch=epoch))

    return run, runs


def test_the_median_pruner_stops_a_trial_below_the_median(tmp_path):
    cfg, _ = tune_config(
        ["study_name=p", f"dir={tmp_path}", "pruner=median", "pruner.n_startup_trials=2"]
        + ["pruner.n_warmup_steps=1", "+search.params.x={type:float,low:0,high:1}"]
    )
    study = optuna.create_study(direction="maximize", pruner=instantiate(cfg.pruner))
    for x in (0.8, 0.9, 0.1, 0.95):
        study.enqueue_trial({"x": x})
    objective = Objective(cfg, distributions(cfg.search.params, "search"), [])
    objective.run_training, epochs = fake_training(epochs=3)
    study.optimize(objective, n_trials=4)
    states = [t.state for t in study.trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert study.trials[2].last_step == 1  # the first epoch after the warm-up
    assert [t.value for t in study.trials if t.state == TrialState.COMPLETE] == pytest.approx(
        [0.8, 0.9, 0.95]
    )
    assert epochs == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2]


def test_the_searchs_keys_and_trainings_are_told_apart():
    ours, theirs = split_overrides(
        ["search=demo", "n_trials=3", "pruner.n_startup_trials=1", "optim.lr=1e-3", "+x.y=1"]
    )
    assert ours == ["search=demo", "n_trials=3", "pruner.n_startup_trials=1"]
    assert theirs == ["optim.lr=1e-3", "+x.y=1"]
    assert not tune_keys() & set(compose_config(["experiment=demo"]))


def test_search_spaces_nested_or_dotted_and_their_errors():
    nested = distributions({"optim": {"lr": {"type": "float", "low": 1, "high": 2}}}, "s")
    dotted = distributions({"optim.lr": {"type": "float", "low": 1, "high": 2}}, "s")
    assert nested == dotted == {"optim.lr": {"type": "float", "low": 1, "high": 2}}
    with pytest.raises(UserValueError, match="params.optim.lr \\(float\\) needs high"):
        distributions({"optim.lr": {"type": "float", "low": 1}}, "s")
    with pytest.raises(UserValueError, match="params.head.type is 'choice'; one of float"):
        distributions({"head": {"type": "choice", "choices": ["v0"]}}, "s")
    with pytest.raises(UserValueError, match="params.head.dropout is 0.5, not a distribution"):
        distributions({"head": {"dropout": 0.5}}, "s")
    for name in ("report", "finetune", "demo"):  # the shipped spaces all compose
        cfg, _ = tune_config([f"search={name}"])
        space = distributions(cfg.search.params, f"search={name}")
        check_settings(cfg, space, ["experiment=demo"], f"search={name}")


def test_a_key_searched_and_set_on_the_command_line_or_missing_is_refused():
    cfg, _ = tune_config(["search=demo"])
    space = distributions(cfg.search.params, "search=demo")
    with pytest.raises(UserValueError, match="optim.lr: searched \\(search=demo\\) and set"):
        check_settings(cfg, space, ["optim.lr=1e-3"], "search=demo")
    typo = {"optim.lrr": {"type": "float", "low": 1, "high": 2}}
    with pytest.raises(UserValueError, match="search=x with the command line's overrides"):
        check_settings(cfg, typo, [], "search=x")


def test_show_names_a_missing_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["show", "study_name=nothing"])
    assert exit_info.value.code == 2
    assert "no study 'nothing' here: no outputs/tune/nothing/study.db" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["n_trials=1"])
    assert "give search=NAME, one of demo, finetune, report" in capsys.readouterr().err


@pytest.mark.slow
def test_the_lr_finder_prints_a_suggestion_and_writes_its_plot(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b", "c"], train=8, val=2, test=1, size=32)
    run_dir = tmp_path / "lr"
    out = run_main(
        [
            "lr",
            "lr_find.num_training=4",
            f"data.root={root}",
            f"hydra.run.dir={run_dir}",
            *TINY,
            "data.batch_size=8",
        ]
    )
    assert "suggested optim.lr=" in out or "no suggestion" in out
    assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_opening_a_new_study_retries_when_another_process_creates_its_tables(tmp_path, monkeypatch):
    """Two processes starting on one new storage can both create Optuna's tables; the one
    that loses the race must try again rather than fail."""
    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, url, **kwargs):
            calls.append(url)
            super().__init__(url, **kwargs)
            if len(calls) == 1:  # the other process stamped the tables' version first
                raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, None)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    url = sqlite(tmp_path)
    storage = open_storage(url, {})
    assert len(calls) == 2
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: 1.0, n_trials=1)
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study_run_their_trials_once_each(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b", "c"], train=4, val=2, test=1, size=32)
    cmd = [sys.executable, "-m", "hw1.tune", "search=demo", "study_name=both", "n_trials=1"]
    cmd += [f"data.root={root}", *tiny("optim.lr", "head.dropout")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    folder = tmp_path / "outputs" / "tune" / "both"
    trials = optuna.load_study(study_name="both", storage=sqlite(folder)).trials
    assert sorted(t.number for t in trials) == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["run_dir"] for t in trials) == [
        str(Path("outputs/tune/both") / str(n)) for n in range(2)
    ]
    assert all((folder / str(n) / "metrics.json").is_file() for n in range(2))


def test_a_trial_stopped_by_a_signal_is_failed_with_how_to_continue_it(tmp_path):
    """R9: a SIGTERM in a trial (the training exits 143, last.ckpt saved) left the trial
    RUNNING in the study forever."""
    cfg, _ = tune_config(
        ["study_name=s", f"dir={tmp_path}", "+search.params.x={type:float,low:0,high:1}"]
    )
    study = optuna.create_study(direction="maximize")
    objective = Objective(cfg, distributions(cfg.search.params, "search"), [])

    def stopped(overrides, run_dir, callbacks):
        raise SystemExit(143)

    objective.run_training = stopped
    with pytest.raises(TrialStopped) as error:
        study.optimize(objective, n_trials=2, catch=(Exception,))
    assert error.value.code == 143
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert study.trials[0].user_attrs["fail_reason"] == (
        f"stopped (exit 143); continue it by hand with python -m hw1.train resume=true "
        f"hydra.run.dir={tmp_path / '0'}"
    )


def test_a_trial_whose_process_was_killed_is_failed_by_the_next_run(tmp_path, monkeypatch):
    """R9, SIGKILL: no handler runs; the trial's heartbeat stops, and the next trial of the
    study (any process) marks it FAIL after the grace period."""
    monkeypatch.setattr(hw1.training.tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(hw1.training.tuning, "GRACE_S", 1)
    storage = open_storage(sqlite(tmp_path), {})
    study = optuna.create_study(study_name="k", storage=storage, direction="maximize")
    killed = study.ask()  # RUNNING, as a killed process leaves it
    storage.record_heartbeat(killed._trial_id)
    time.sleep(2.5)
    study.optimize(lambda trial: 0.5, n_trials=1)
    states = [t.state for t in optuna.load_study(study_name="k", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.slow
def test_a_rerun_right_after_a_sigkill_fails_the_killed_trial_and_goes_on(tmp_path, monkeypatch):
    """A SIGKILL of hw1.tune mid-trial (no handler runs): the next hw1.tune of the study,
    started at once, marks that trial FAIL (its process is gone) instead of leaving it
    RUNNING for the heartbeat's grace period, and runs its own trials."""
    args = ["study_name=k", f"dir={tmp_path}", "n_trials=1"]
    args += ["+search.params.optim.lr={type:float,low:1e-4,high:1e-2}"]
    killed = (
        "import os, signal, sys\n"
        "import hw1.training.tuning as tuning\n"
        "from hw1.tune import main\n"
        "def training(overrides, run_dir, callbacks):\n"
        "    print('training', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "tuning.run_training = training\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", killed, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    storage = sqlite(tmp_path)
    [trial] = optuna.load_study(study_name="k", storage=storage).trials
    assert trial.state == TrialState.RUNNING  # as the kill left it

    def training(overrides, run_dir, callbacks):
        lr = float(next(o for o in overrides if o.startswith("optim.lr=")).split("=")[1])
        trainer = SimpleNamespace(
            sanity_checking=False, callback_metrics={"val/acc": torch.tensor(lr)}
        )
        for callback in callbacks:
            callback.on_validation_end(trainer, SimpleNamespace(current_epoch=0))

    monkeypatch.setattr(hw1.training.tuning, "run_training", training)
    out = run_main(args)
    trials = optuna.load_study(study_name="k", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith(f"its process (pid {trials[0].user_attrs['process']['pid']}) was")
    assert f"hydra.run.dir={tmp_path / '0'}" in reason
    assert f"trial 0 fail: {reason}" in out
