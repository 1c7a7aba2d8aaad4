"""One writer per run directory (R10 of docs/reviews/reliability-3.md): two hw1.train in
one hydra.run.dir both ran and mixed their checkpoints, metrics and overrides."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import TINY

from hw1.utils.runlock import LOCK_NAME, RunDirectoryLocked, run_lock


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path):
    with run_lock(tmp_path, "hw1.train"):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record == {"pid": os.getpid(), "host": socket.gethostname(), "command": "hw1.train"}
        with pytest.raises(RunDirectoryLocked) as error, run_lock(tmp_path, "hw1.predict"):
            pass
    assert f"{tmp_path} is in use by another hw1 command (hw1.train, pid {os.getpid()} on " in (
        str(error.value)
    )
    assert not (tmp_path / LOCK_NAME).exists()  # given back
    with run_lock(tmp_path, "hw1.train"):  # and free again
        pass


def test_a_lock_left_by_a_process_that_is_gone_is_taken(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    record = {"pid": int(gone.stdout), "host": socket.gethostname(), "command": "hw1.train"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with run_lock(tmp_path, "hw1.eval"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_of_another_host_is_honoured_and_says_how_to_clear_it(tmp_path):
    record = {"pid": 1, "host": "node-17", "command": "hw1.train"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    refused = pytest.raises(RunDirectoryLocked, match=rf"pid 1 on node-17.*delete {tmp_path}")
    with refused, run_lock(tmp_path):
        pass


@pytest.mark.slow
def test_train_into_a_locked_run_directory_is_refused_before_hydra_writes_there(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "hw1.train", f"data.root={tmp_path}", f"hydra.run.dir={run_dir}"]
    with run_lock(run_dir, "hw1.train"):
        proc = subprocess.run([*cmd, *TINY], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{run_dir} is in use by another hw1 command (hw1.train, pid {os.getpid()}" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == []  # no .hydra/, no train.log


@pytest.mark.slow
def test_a_default_run_directory_is_never_another_runs(tmp_path):
    """Two runs started in the same second (or one in the second another ended) got the
    same outputs/DATE/TIME and mixed their files: the second now gets TIME_2. Here every
    second of the next two minutes is taken already, by a finished run."""
    import datetime

    from conftest import make_hw1_folder

    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=2, val=1, test=1, size=32)
    now = datetime.datetime.now()
    taken = []
    for s in range(-2, 120):
        t = now + datetime.timedelta(seconds=s)
        folder = tmp_path / "outputs/check" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text("another run's")
        taken.append(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "hw1.check", f"data.root={root}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(sorted(p.name for p in folder.iterdir()) == ["metrics.json"] for folder in taken)
    [ours] = [p.parent for p in tmp_path.glob("outputs/check/*/*/.hydra")]
    assert ours.name.endswith("_2") and ours.with_name(ours.name[:-2]) in taken
    assert (ours / "check.log").is_file()


def test_a_sweep_directory_is_never_another_sweeps(tmp_path):
    """Two sweeps started in the same second shared outputs/multirun/DATE/TIME, their jobs
    0, 1, ... overwriting each other's: the second now gets TIME_2. Every second of the
    next minute is taken already; the sweep's one job fails at once (no data)."""
    import datetime

    now = datetime.datetime.now()
    taken = []
    for s in range(-2, 60):
        t = now + datetime.timedelta(seconds=s)
        day, time = t.strftime("%Y-%m-%d"), t.strftime("%H-%M-%S")
        folder = tmp_path / "outputs/multirun" / day / time
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "multirun.yaml").write_text("another sweep's")
        taken.append(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "hw1.train", "-m", f"data.root={tmp_path / 'none'}", "seed=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "data.root" in proc.stderr, proc.stderr[-3000:]  # the job's own error
    assert all(sorted(p.name for p in folder.iterdir()) == ["multirun.yaml"] for folder in taken)
    [ours] = [p.parent.parent for p in tmp_path.glob("outputs/multirun/*/*/0/.hydra")]
    assert ours.name.endswith("_2") and ours.with_name(ours.name[:-2]) in taken
    assert (ours / "multirun.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["multirun"]


def test_fresh_run_directories_are_distinct_under_a_race(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from hw1.utils.runlock import fresh_run_dir

    base = str(tmp_path / "outputs" / "2026-12-07" / "10-00-00")
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: fresh_run_dir(base), range(8)))
    assert sorted(dirs) == sorted([base, *(f"{base}_{n}" for n in range(2, 9))])


def test_every_commands_default_run_directory_is_a_fresh_one():
    from hw1.utils.config import CONF_DIR

    for path in CONF_DIR.glob("*.yaml"):
        text = path.read_text()
        for node in ("run", "sweep"):
            if f"\n  {node}:\n    dir:" in text:
                assert f"  {node}:\n    dir: ${{hw1.fresh_dir:outputs/" in text, path.name


def test_composing_a_config_leaves_no_empty_run_directory(tmp_path):
    """Hydra resolves a parent config's run directory when a child sets its own (eval's
    predict): the one made then is removed at exit, being empty."""
    code = (
        "from hw1.utils.config import compose_config\n"
        "for name in ('eval', 'check', 'distill'):\n"
        "    compose_config([], config_name=name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p for p in tmp_path.rglob("*") if p.name != "outputs"] == []


@pytest.mark.parametrize("rank", ["RANK", "LOCAL_RANK", "SLURM_PROCID"])
def test_a_launchers_later_rank_takes_the_run_directory_as_the_first_one_does(
    tmp_path, monkeypatch, rank
):
    from hw1.utils.runlock import fresh_run_dir

    base = str(tmp_path / "outputs" / "12-00-00")
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert fresh_run_dir(base) == base  # the first rank claims it
    monkeypatch.setenv(rank, "1")
    assert fresh_run_dir(base) == base  # a later rank of the same run: not base_2
