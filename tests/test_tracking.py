"""Experiment tracking (hw1.training.tracking): the CSV, MLflow and W&B loggers, alone or
beside TensorBoard; a real ``mlflow server`` on a free loopback port and a SQLite store,
read back with MlflowClient; a killed run resumed into the same MLflow run; a W&B offline
run; and the bad inputs that must stop a run before training
(hw1.training.tracking_checks)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_hw1_folder, run_in_process_group, run_train, train_command
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from hw1.training import tracking, tracking_checks
from hw1.utils.config import compose_config
from hw1.utils.errors import UserRuntimeError

mlflow = pytest.importorskip("mlflow")
REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = ("trainer.max_epochs=1", "sched.T_max=1")
SERVER_START_S = 180  # a cold `mlflow server` sets up its database first: ~30 s on 2 cores


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """6 classes, 3 training batches an epoch at the TINY batch size, 12 test images."""
    root = tmp_path_factory.mktemp("tracking") / "data"
    make_hw1_folder(root, [str(i) for i in range(6)], train=8, val=3, test=2)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server, as README starts it, on 127.0.0.1 and a free port; its URL.
    Stopped (its whole process group) when the module's tests are done."""
    base = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
        "--artifacts-destination", str(base / "mlartifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with open(base / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield wait_for(f"http://127.0.0.1:{port}", proc, base / "server.log")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(url: str, proc: subprocess.Popen, log: Path) -> str:
    """``url`` once its /health answers; fails with the server's log if it never does."""
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"mlflow server did not start:\n{log.read_text()[-3000:]}"
                ) from None
            time.sleep(1)


def tracked_run(run_dir: Path):
    """(MlflowClient, run) of the MLflow run that tracking.json names."""
    saved = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for a in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return found


def git_commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def check_the_tracked_run(run_dir: Path, figures: bool = True) -> None:
    """What every MLflow run holds: the short list of settings (not the model's own
    hyper-parameters, not Hydra's _target_ keys), the per-epoch metrics, metrics.json's
    final values, the run's files and figures as artifacts, the commit and command line."""
    client, run = tracked_run(run_dir)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.arch"] == "resnet18" and params["optim.lr"] == "0.003"
    assert not [k for k in params if "/" in k or k.endswith("_target_")], sorted(params)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["final/best_val_acc"] == pytest.approx(metrics["best_val_acc"])
    assert run.data.metrics["final/epochs"] == metrics["epochs"]
    history = client.get_metric_history(run.info.run_id, "val/acc")
    expected = [h["val_acc"] for h in metrics["val_history"]]
    assert [h.value for h in history] == pytest.approx(expected)
    assert client.get_metric_history(run.info.run_id, "train/loss")
    files = artifacts(client, run.info.run_id)
    assert {"prediction.csv", "metrics.json"} <= files
    if figures:
        assert {f.split("_step")[0] for f in files if f.startswith("figures/")} == {
            "figures/train_augmented", "figures/val_confusion",
        }  # fmt: skip
    tags = run.data.tags
    assert "logger=" in tags["hw1.command"] and str(run_dir) in tags["hw1.command"]
    if git_commit():
        assert tags["mlflow.source.git.commit"] == git_commit()


@pytest.mark.slow
def test_a_run_logs_to_a_real_mlflow_server_beside_tensorboard(root, mlflow_server, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(
        root, run_dir, *ONE_EPOCH, "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={mlflow_server}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_the_tracked_run(run_dir)
    assert next((run_dir / "tb").glob("events.out.tfevents*"))  # TensorBoard as before
    _, run = tracked_run(run_dir)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded to the server
    assert f"run {run.info.run_id} in {mlflow_server}" in proc.stdout


@pytest.mark.slow
def test_csv_and_a_sqlite_store_without_tensorboard(root, tmp_path):
    """The default store's shape (a SQLite file, artifacts beside it), and CSV: no
    TensorBoard anywhere, the figures still reach MLflow, the summary names both."""
    run_dir = tmp_path / "run"
    store = tmp_path / "store" / "mlflow.db"
    proc = run_train(
        root, run_dir, *ONE_EPOCH, "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{store}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_the_tracked_run(run_dir)
    _, run = tracked_run(run_dir)
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert not (run_dir / "tb").exists() and "tensorboard" not in proc.stdout
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val/acc"]) for r in rows if r["val/acc"]] == [run.data.metrics["val/acc"]]
    assert any(r["final/best_val_acc"] for r in rows)
    assert str(run_dir / "csv" / "metrics.csv") in proc.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{store}" in proc.stdout

    # hw1.report reads the same run back from the store, as from the run directory
    from hw1.reporting.runs import report

    (row,) = report([], tmp_path / "report", mlflow=(f"sqlite:///{store}", "hw1"))
    (from_dir,) = report([run_dir], tmp_path / "report_dir")
    keys = ("runs", "arch", "batch_size", "lr", "val_acc", "best_epoch", "epochs", "params")
    assert {k: row[k] for k in keys} == {k: from_dir[k] for k in keys}
    assert row["arch"] == "resnet18" and row["sched"].startswith("cosine T_max=1")


@pytest.mark.slow
def test_a_killed_run_resumes_into_the_same_mlflow_run(root, tmp_path):
    """SIGKILL as the second epoch starts (no clean-up runs), then resume=true: one run
    in the experiment, both epochs' val/acc in it once, finished."""
    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = train_command(
        root, run_dir, "trainer.max_epochs=2", "sched.T_max=2", "logger=mlflow",
        f"logger.mlflow.tracking_uri={uri}",
        "+callbacks.kill._target_=signal_callbacks.SignalAt", "+callbacks.kill.signal=SIGKILL",
        "+callbacks.kill.phase=train", "+callbacks.kill.batch=0", "+callbacks.kill.epoch=1",
    )  # fmt: skip
    status, out = run_in_process_group(cmd, timeout=300)
    assert status == -signal.SIGKILL, out[-3000:]
    first_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]

    status, out = run_in_process_group([*cmd, "resume=true", "~callbacks.kill"], timeout=300)
    assert status == 0, out[-3000:]
    client, run = tracked_run(run_dir)
    assert run.info.run_id == first_id and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    history = client.get_metric_history(run.info.run_id, "val/acc")
    epochs = [int(e.value) for e in client.get_metric_history(run.info.run_id, "epoch")]
    assert len(history) == 2 and len({h.step for h in history}) == 2
    assert sorted(set(epochs)) == [0, 1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(
        [h["val_acc"] for h in metrics["val_history"]]
    )


@pytest.mark.slow
def test_wandb_offline_writes_its_run_into_the_run_directory(root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    proc = run_train(root, run_dir, *ONE_EPOCH, "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]["id"]
    (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    assert {"prediction.csv", "metrics.json"} <= {p.name for p in (offline / "files").iterdir()}
    assert not (run_dir / "tb").exists()


@pytest.mark.slow
def test_logger_none_trains_without_any_logger(root, tmp_path):
    run_dir = tmp_path / "run"
    few = ("trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    proc = run_train(root, run_dir, *ONE_EPOCH, *few, "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "prediction.csv").is_file()
    assert not {"tb", "csv", "tracking.json"} & {p.name for p in run_dir.iterdir()}


@pytest.mark.slow
def test_an_unreachable_server_stops_the_run_before_training(root, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_train(root, tmp_path / "run", "logger=mlflow", f"logger.mlflow.tracking_uri={url}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"logger.mlflow.tracking_uri={url}: no answer" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


def config(*overrides: str):
    return compose_config(["data.root=/nowhere", *overrides])


def test_an_unwritable_store_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"  # a folder that cannot be made
    with pytest.raises(UserRuntimeError, match=f"tracking_uri={uri}: cannot create"):
        tracking_checks.check_stores(config("logger=mlflow", f"logger.mlflow.tracking_uri={uri}"))


def test_a_server_that_is_not_mlflow_is_named(tmp_path):
    """Something answers, but not as an MLflow server does."""
    from http.server import HTTPServer, SimpleHTTPRequestHandler
    from threading import Thread

    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(UserRuntimeError, match="HTTP 404 to /health"):
            tracking_checks.check_stores(
                config("logger=mlflow", f"logger.mlflow.tracking_uri={url}")
            )
    finally:
        server.shutdown()


def test_wandb_online_without_a_key_suggests_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    with pytest.raises(UserRuntimeError, match=r"no W&B API key.*logger.wandb.offline=true"):
        tracking_checks.check_stores(config("logger=wandb", "logger.wandb.offline=false"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    tracking_checks.check_stores(config("logger=wandb", "logger.wandb.offline=false"))


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(UserRuntimeError, match=r'logger=mlflow needs .*pip install "hw1\[track\]"'):
        tracking_checks.check_stores(config("logger=[tensorboard,mlflow]"))


@pytest.mark.parametrize(
    ("logger", "entries"),
    [("tensorboard", ["tensorboard"]), ("[tensorboard,mlflow]", ["tensorboard", "mlflow"]),
     ("[csv,wandb]", ["csv", "wandb"]), ("none", [])],
)  # fmt: skip
def test_logger_configs_compose_alone_and_as_lists(logger, entries):
    assert list(tracking_checks.logger_entries(config(f"logger={logger}"))) == entries


def test_a_sweep_is_one_experiment_and_its_jobs_are_named_like_their_directories(tmp_path):
    cfg = compose_config(
        ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True
    )
    with open_dict(cfg):
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    try:
        assert tracking.names(cfg, tmp_path / "sweep" / "0_R34_64") == (
            str(tmp_path / "sweep"),
            "0_R34_64",
        )
    finally:
        HydraConfig.instance().cfg = None


def test_resume_reads_the_ids_of_the_checkpoints_run(tmp_path):
    first = tmp_path / "first"
    (first / "checkpoints").mkdir(parents=True)
    (first / "tracking.json").write_text(json.dumps({"mlflow": {"run_id": "abc"}}))
    ckpt = first / "checkpoints" / "last.ckpt"
    cfg = config(f"ckpt_path={ckpt}")
    assert tracking.saved_ids(cfg, tmp_path / "second") == {"mlflow": {"run_id": "abc"}}
    assert tracking.saved_ids(config("resume=true"), first) == {"mlflow": {"run_id": "abc"}}
    assert tracking.saved_ids(config(), first) == {}  # a fresh run starts afresh


@pytest.mark.parametrize(("outcome", "state", "status"), [(None, "COMPLETE", "FINISHED"),
                         ("pruned", "PRUNED", "KILLED")])  # fmt: skip
def test_a_tune_trial_is_a_run_of_the_studys_experiment_with_its_state(
    tmp_path, outcome, state, status
):
    optuna = pytest.importorskip("optuna")
    from hw1.training.search_space import distributions
    from hw1.training.tuning import Objective, tune_config

    cfg, _ = tune_config(
        ["study_name=s", f"dir={tmp_path}", "+search.params.x={type:float,low:0,high:1}"]
    )
    client = mlflow.MlflowClient(uri := f"sqlite:///{tmp_path / 'mlflow.db'}")
    seen = []

    def training(overrides, run_dir, callbacks):
        """What train() leaves behind: a run opened under the names it was given, its ids
        in tracking.json, then a validation score (or the pruner's stop)."""
        seen.extend(o for o in overrides if o.startswith("tracking."))
        experiment = client.create_experiment(seen[0].split("=")[1])
        run = client.create_run(experiment, run_name=seen[1].split("=")[1])
        saved = {"mlflow": {"tracking_uri": uri, "run_id": run.info.run_id}}
        write = run_dir / tracking.TRACKING_FILE
        write.parent.mkdir(parents=True)
        write.write_text(json.dumps(saved))
        if outcome == "pruned":
            raise optuna.TrialPruned()
        callbacks[0].values.append(0.5)

    objective = Objective(cfg, distributions(cfg.search.params, "search"), [])
    objective.run_training = training
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    assert seen == ["tracking.experiment=s", "tracking.run=trial_0"]
    (run,) = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    assert run.data.tags["optuna.trial"] == "0" and run.data.tags["optuna.state"] == state
    if status == "KILLED":
        assert run.info.status == "KILLED"
