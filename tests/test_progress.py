"""hw1.utils.progress: a bar on a terminal, a count in logs, nothing for short work; and
the training bar's config group (progress=tqdm, progress=rich)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import TINY, make_hw1_folder
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from hw1.check import report
from hw1.training.callbacks import check_progress_bar
from hw1.training.tuning import split_overrides
from hw1.utils import progress as prog
from hw1.utils.config import compose_config
from hw1.utils.errors import UserRuntimeError, UserValueError


def consume(monkeypatch, capsys, mode: str | None, items, **kw) -> tuple[list, str]:
    if mode is None:
        monkeypatch.delenv(prog.ENV, raising=False)
    else:
        monkeypatch.setenv(prog.ENV, mode)
    out = list(prog.progress(items, "checked", "images", **kw))
    return out, capsys.readouterr().err


def test_a_log_gets_count_lines_not_a_redrawn_bar(monkeypatch, capsys):
    out, err = consume(monkeypatch, capsys, "count", range(12000))
    assert out == list(range(12000))
    assert err.splitlines() == ["checked 12,000/12,000 images"]  # short: the end alone
    # a count every COUNT_EVERY_S seconds while it runs
    monkeypatch.setattr(prog, "COUNT_EVERY_S", 0.0)
    _, err = consume(monkeypatch, capsys, "count", iter(range(3)), total=3)
    assert err.splitlines() == ["checked 1/3 images", "checked 2/3 images", "checked 3/3 images"]
    _, err = consume(monkeypatch, capsys, "count", (i for i in range(2)))  # no total known
    assert err.splitlines()[-1] == "checked 2 images" and "\r" not in err


def test_a_terminal_gets_a_tqdm_bar_and_short_work_shows_nothing(monkeypatch, capsys):
    _, err = consume(monkeypatch, capsys, "bar", range(50))
    assert "checked: 100%" in err and "50/50" in err and "images/s" in err
    # auto, not a terminal (pytest's capture): work shorter than DELAY_S prints nothing
    _, err = consume(monkeypatch, capsys, None, range(50))
    assert err == ""
    monkeypatch.setattr(prog, "DELAY_S", 0.0)
    _, err = consume(monkeypatch, capsys, "auto", range(50))
    assert err.splitlines() == ["checked 50/50 images"]
    _, err = consume(monkeypatch, capsys, "off", range(50))
    assert err == ""


def test_steps_are_counted_one_by_one_even_on_a_terminal(monkeypatch, capsys):
    _, err = consume(monkeypatch, capsys, "bar", ["a.ckpt", "b.ckpt"], each=True)
    assert err.splitlines() == ["checked 1/2 images", "checked 2/2 images"]


def test_a_wrong_setting_is_named(monkeypatch, capsys):
    with pytest.raises(UserValueError, match="HW1_PROGRESS=loud: use one of auto, bar"):
        consume(monkeypatch, capsys, "loud", range(2))


def test_hw1_check_shows_the_images_it_checks_on_stderr(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=3, val=1, test=1)
    cfg = compose_config([f"data.root={root}"], config_name="check")
    for mode, expected in (("bar", "checked: 100%"), ("count", "checked 10/10 images")):
        (root / ".hw1-images.json").unlink(missing_ok=True)  # decoded again, not cached
        monkeypatch.setenv(prog.ENV, mode)
        text, problems = report(cfg)
        err = capsys.readouterr().err
        assert problems == [] and expected in err and "10/10" in err, err
        assert "checked" not in text  # stdout keeps the report alone


def test_progress_picks_the_training_bar():
    cfg = compose_config([])
    bar = instantiate(cfg.callbacks.progress_bar)
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == 10  # the default, unchanged
    cfg = compose_config(["progress=rich"])
    assert isinstance(instantiate(cfg.callbacks.progress_bar), RichProgressBar)
    assert cfg.callbacks.model_checkpoint is not None  # the other callbacks stay
    for name in ("distill", "check"):  # the commands that train through train.yaml's groups
        cfg = compose_config(["progress=rich"], config_name=name)
        assert cfg.callbacks.progress_bar._target_.endswith("RichProgressBar")
    # hw1.tune hands it to every trial, whose config is train.yaml's
    assert split_overrides(["n_trials=2", "progress=rich"]) == (["n_trials=2"], ["progress=rich"])


def test_progress_rich_without_rich_names_the_extra(monkeypatch):
    cfg = compose_config(["progress=rich"])
    check_progress_bar(cfg.callbacks)  # installed: nothing to say
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails
    message = r'progress=rich needs rich, which is not installed: pip install "hw1\[rich\]"'
    with pytest.raises(UserRuntimeError, match=message):
        check_progress_bar(cfg.callbacks)
    check_progress_bar(compose_config([]).callbacks)  # tqdm needs nothing more


@pytest.mark.slow
def test_a_run_trains_with_the_rich_bar_quietly_in_a_log(tmp_path):
    """progress=rich on a non-terminal (captured, as in CI): the bars are printed once, at
    their end, not redrawn; the run's trainer has a RichProgressBar."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=4, val=1, test=1)
    probe = "+callbacks.probe._target_=run_probes.ProgressBarProbe"
    cmd = [sys.executable, "-m", "hw1.train", f"data.root={root}", f"hydra.run.dir={tmp_path}/r"]
    cmd += [*TINY, "progress=rich", "trainer.fast_dev_run=true", "logger=none", probe]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "progress bar: RichProgressBar" in proc.stdout
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(epoch_lines) == 1, proc.stdout  # printed once, when the bar ends
    assert "\r" not in proc.stdout + proc.stderr
