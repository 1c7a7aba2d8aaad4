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
