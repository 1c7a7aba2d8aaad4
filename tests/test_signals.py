"""Ctrl-C in hw1's commands, single and double: a clean stop with exit status 130, a line
saying what to rerun, and no traceback (hw1.utils.signals, hw1.utils.errors.reported)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest
from conftest import make_hw1_folder, run_in_process_group, train_command

from hw1.utils import signals
from hw1.utils.errors import reported
from hw1.utils.signals import Stopped, latched, stop_if_signalled


def test_a_second_ctrl_c_stops_at_once_with_status_130(caplog):
    with pytest.raises(Stopped) as stopped, latched("predicting", "python -m hw1.predict X"):
        os.kill(os.getpid(), signal.SIGINT)  # noted: the owner stops at its next point
        os.kill(os.getpid(), signal.SIGINT)  # again: stops here
        pytest.fail("the second Ctrl-C did not stop")
    assert stopped.value.code == 130
    assert "SIGINT again: stopped predicting at once; nothing was written. Rerun: " in caplog.text
    assert "python -m hw1.predict X" in caplog.text
    # Python's handler is back, or the one the latch found (a third Ctrl-C ignored meanwhile)
    assert signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_one_ctrl_c_waits_for_the_owner(caplog):
    with pytest.raises(Stopped) as stopped, latched("averaging") as latch:
        os.kill(os.getpid(), signal.SIGINT)
        assert latch.received == signal.SIGINT  # nothing raised yet
        stop_if_signalled(latch)
    assert stopped.value.code == 130
    assert "SIGINT: stopped averaging; nothing was written. Rerun: " in caplog.text
    # the process is ending: another Ctrl-C would cut its clean-up short with a traceback
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_training_stopped_by_a_signal_ignores_further_ctrl_c_as_it_ends():
    """Lightning puts Python's handler back after saving last.ckpt; the command's exit
    status 130 (or 143) passes reported() on its way out, which ignores Ctrl-C again."""
    with pytest.raises(SystemExit), reported():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as Lightning's teardown
        raise SystemExit(130)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_file_cut_short_by_a_second_ctrl_c_still_exits_130():
    """torch.save interrupted mid-checkpoint raises its own RuntimeError as it closes the
    file: the command still ends as the Ctrl-C's, not with exit status 1 and torch's text."""

    class Writer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    with pytest.raises(SystemExit) as stopped, reported(), Writer():
        raise Stopped(signal.SIGINT)
    assert stopped.value.code == 130
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize(("requested", "status"), [(0, 1), (signal.SIGINT, 130)])
def test_a_ddp_process_whose_peer_went_says_so_in_one_line(monkeypatch, capsys, requested, status):
    """Rank 0 stopped at once (a second Ctrl-C) or died: rank 1's next collective fails.
    One line pointing at the other process, not gloo's traceback."""
    monkeypatch.setattr(signals, "_requested", requested)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stopped, reported():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:9")
    assert stopped.value.code == status
    err = capsys.readouterr().err
    assert err.strip() == (
        "process 1 stops: another process of this run has gone (Connection closed by peer); "
        "its own lines above say why"
    )


def test_a_forked_loader_worker_leaves_the_signal_to_its_owner(caplog):
    """A terminal's Ctrl-C reaches the loader workers, which inherit the latch: a worker
    neither announces the stop nor exits; the owner shuts it down."""
    with latched("predicting") as latch:
        pid = os.fork()
        if pid == 0:  # the worker
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: still the owner's
            os._exit(0 if latch.received == 0 else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert latch.received == 0
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_in_a_command_without_stopping_points_is_one_line_and_130(capsys):
    with pytest.raises(SystemExit) as stopped, reported():
        raise KeyboardInterrupt
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("SIGINT: stopped; nothing was left half-written. Rerun: ")
    assert "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a second Ctrl-C meanwhile
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_while_a_command_starts_is_one_line_and_130(tmp_path):
    """``python -m hw1.X`` has ``-m`` as argv[0] while Python imports the package hw1: a
    Ctrl-C then (importing torch takes seconds) is one line, not an import traceback."""
    code = (
        "import os, signal, sys, time; sys.argv[0] = '-m'; import hw1; "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "SIGINT: stopped while starting; nothing was written\n"


def test_a_program_importing_hw1_keeps_its_ctrl_c(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["my_script.py"])
    signals.stop_cleanly_while_starting()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_command_s_work_gets_python_s_ctrl_c_back(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["-m"])
    signals.stop_cleanly_while_starting()
    assert signal.getsignal(signal.SIGINT) is signals._stopped_while_starting
    with reported():
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_shard_s_ctrl_c_exits_130_not_litdata_s_0(tmp_path, monkeypatch, capsys):
    """LitData's optimize ends the process with status 0 on Ctrl-C; hw1.shard's 130."""
    pytest.importorskip("litdata")
    from litdata.processing.data_processor import DataProcessor

    from hw1.data.shards import PARTIAL, ctrl_c_exits_130

    class Exited(BaseException):
        pass

    def exit_(status):
        raise Exited(status)

    monkeypatch.setattr(os, "_exit", exit_)
    stops = []

    class Worker:
        def join(self, timeout):
            stops.append("joined")

    class Queue:
        def put(self, item):
            stops.append(item)

    processor = DataProcessor.__new__(DataProcessor)
    processor.stop_queues, processor.workers = [Queue()], [Worker()]
    with ctrl_c_exits_130(tmp_path / "shards"), pytest.raises(Exited) as exited:
        processor._signal_handler(signal.SIGINT, None)  # as optimize installs it
    assert exited.value.args == (130,)
    assert stops == [None, "joined"]  # its workers told to stop, as LitData does
    err = capsys.readouterr().err
    assert f"SIGINT: stopped writing shards; {tmp_path / 'shards'} is incomplete" in err
    assert PARTIAL in err
    assert DataProcessor._signal_handler.__name__ == "_signal_handler"  # theirs again


@pytest.mark.slow
def test_a_second_ctrl_c_in_training_stops_at_once_with_130_and_a_rerun_line(tmp_path):
    """Two real SIGINTs in one training batch: the first asks for last.ckpt at the end of
    the batch, the second stops at once, saving nothing. Lightning alone would exit with
    status 1 and no word on what to rerun."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=4, val=2, test=0, size=32)
    run_dir = tmp_path / "run"
    callback = "+callbacks.signal_at"
    status, out = run_in_process_group(
        [
            *train_command(root, run_dir, "data.batch_size=2", "trainer.max_epochs=2"),
            f"{callback}._target_=signal_callbacks.SignalAt",
            f"{callback}.signal=SIGINT",
            f"{callback}.phase=train",
            f"{callback}.times=2",
        ],
        timeout=240,
    )
    assert status == 130, out[-4000:]
    assert "SIGINT again: stopped at once, without saving last.ckpt" in out, out[-4000:]
    assert "no last.ckpt was saved yet: rerun python -m hw1.train" in out
    assert "Traceback" not in out
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    log = (run_dir / "train.log").read_text()
    assert "SIGINT again: stopped at once" in log
    assert "GPU available" in log  # Lightning's lines too


def test_the_run_log_holds_the_error(tmp_path):
    """A run that fails: train.log holds the message (a user error) or the traceback."""
    log = logging.getLogger()
    path = tmp_path / "train.log"
    handler = logging.FileHandler(path)
    log.addHandler(handler)
    try:
        with pytest.raises(SystemExit), reported():
            from hw1.utils.errors import UserValueError

            raise UserValueError("data.batch_size=0: use a whole number of 1 or more")
        with pytest.raises(RuntimeError), reported():
            raise RuntimeError("out of memory")
    finally:
        log.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "data.batch_size=0: use a whole number of 1 or more" in text
    assert "RuntimeError: out of memory" in text and "Traceback (most recent call last)" in text


@pytest.mark.slow
def test_a_failed_train_leaves_its_error_in_train_log(tmp_path):
    run_dir = tmp_path / "run"
    cmd = train_command(tmp_path / "nowhere", run_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert f"data.root={tmp_path / 'nowhere'}: no such folder" in log
    assert "Seed set to" in log  # Lightning's own line, which used to reach only the console
