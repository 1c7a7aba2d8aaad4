from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_hw1_folder, run_train
from PIL import Image
from test_predict import tiny_model
from torch import nn

from hw1.inference.averaging import average, averaged_checkpoint, load_checkpoints, normalised
from hw1.inference.evaluation import evaluate
from hw1.inference.predictor import predict
from hw1.models.classifier import Classifier
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, eval_preset
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError
from hw1.utils.signals import Stopped, latched

CLASSES = [str(i) for i in range(12)]


def saved(model: Classifier, path) -> str:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


def trained_like(seed: int) -> Classifier:
    """A tiny model whose BatchNorm statistics are not the initial ones, as a trained
    model's are not."""
    model = tiny_model(seed)
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            m.num_batches_tracked.fill_(10 + seed)
    return model


def average_cfg(paths, output, root, *overrides):
    ckpts = ",".join(str(p) for p in paths)
    overrides = [f"ckpt_path=[{ckpts}]", f"output={output}", f"data.root={root}", *overrides]
    return compose_config([*overrides, "data.num_workers=0", "trainer.accelerator=cpu"], "average")


def test_averaging_gives_the_mean_of_the_float_tensors_and_the_first_integer_buffers(tmp_path):
    a, b = trained_like(0), trained_like(1)
    paths = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    saved(a, paths[0]), saved(b, paths[1])
    state = averaged_checkpoint(load_checkpoints(paths), paths)["state_dict"]
    sa, sb = a.state_dict(), b.state_dict()
    assert set(state) == set(sa)
    for key, value in state.items():
        if sa[key].is_floating_point():
            torch.testing.assert_close(value, (sa[key] + sb[key]) / 2)
        else:
            assert torch.equal(value, sa[key]) and not torch.equal(value, sb[key])


def batch_norm_inputs(model: Classifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every BatchNorm layer in a training-mode pass over ``x`` (dropout
    off), gathered with forward hooks."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def averaged_pair(tmp_path, train: int, test: int, batch_size: int):
    """(data root, two checkpoints, their average by hw1.average)."""
    root = tmp_path / "data"
    make_hw1_folder(root, CLASSES, train=train, val=1, test=test)
    paths = [saved(trained_like(s), tmp_path / f"{s}.ckpt") for s in range(2)]
    out = tmp_path / "avg.ckpt"
    average(average_cfg(paths, out, root, f"data.batch_size={batch_size}"))
    return root, paths, out


def test_recalibrated_statistics_are_those_of_a_pass_over_the_training_images(tmp_path):
    # one batch holds every image: the cumulative average is that batch's statistics
    root, paths, out = averaged_pair(tmp_path, train=2, test=0, batch_size=64)

    plain = Classifier.from_checkpoint(paths[0])
    plain.load_state_dict(averaged_checkpoint(load_checkpoints(paths), paths)["state_dict"])
    spec = EvalSpec.from_dict(plain.hparams.preprocess)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    images = [
        (eval_preset(spec)(Image.open(p).convert("RGB")).float() / 255 - mean) / std
        for p in sorted((root / "train").glob("*/*.jpg"))
    ]
    assert len(images) == 24
    inputs = batch_norm_inputs(plain, torch.stack(images))

    result = Classifier.from_checkpoint(out)
    modules = dict(result.named_modules())
    assert len(inputs) == 21  # resnet18's 20 and the head's
    for name, x in inputs.items():
        dims = [0, *range(2, x.ndim)]
        bn = modules[name]
        torch.testing.assert_close(bn.running_mean, x.mean(dim=dims), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, x.var(dim=dims), rtol=1e-4, atol=1e-5)
    # the other weights are the plain average
    torch.testing.assert_close(result.head[0].weight, plain.head[0].weight)


def test_frozen_stages_keep_their_averaged_statistics(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, CLASSES, train=1, val=1, test=0)
    models = [trained_like(s) for s in range(2)]
    for m in models:
        m.hparams.model["trainable_stages"] = 1
    paths = [saved(m, tmp_path / f"{i}.ckpt") for i, m in enumerate(models)]
    out = tmp_path / "avg.ckpt"
    average(average_cfg(paths, out, root))
    state = torch.load(out, weights_only=True)["state_dict"]
    plain = averaged_checkpoint(load_checkpoints(paths), paths)["state_dict"]
    frozen = "backbone.net.layer3.1.bn2.running_mean"
    trained = "backbone.net.layer4.1.bn2.running_mean"
    torch.testing.assert_close(state[frozen], plain[frozen])
    assert not torch.allclose(state[trained], plain[trained])


def test_checkpoints_of_other_models_are_refused_naming_the_file(tmp_path):
    a = saved(tiny_model(0), tmp_path / "a.ckpt")
    other = tiny_model(1)
    other.hparams.head = {**other.hparams.head, "name": "v0"}
    b = saved(other, tmp_path / "b.ckpt")
    with pytest.raises(UserValueError, match=r"b\.ckpt holds another model than .*a\.ckpt.*head"):
        load_checkpoints([tmp_path / "a.ckpt", tmp_path / "b.ckpt"])
    renamed = tiny_model(1)
    renamed.hparams.class_names = [f"c{i}" for i in range(12)]
    c = saved(renamed, tmp_path / "c.ckpt")
    with pytest.raises(UserValueError, match=r"c\.ckpt .*class_names"):
        average(average_cfg([a, c], tmp_path / "avg.ckpt", tmp_path))
    with pytest.raises(UserValueError, match="two checkpoints or more"):
        average(average_cfg([b], tmp_path / "avg.ckpt", tmp_path))
    assert not (tmp_path / "avg.ckpt").exists()


def test_average_takes_the_trainer_keys_and_refuses_the_old_device_key(tmp_path):
    """Every command says where it runs with trainer.accelerator / trainer.devices (issue 28):
    the device= hw1.average took gets a message naming them, before any checkpoint is read."""
    paths = [tmp_path / "missing_a.ckpt", tmp_path / "missing_b.ckpt"]
    cfg = average_cfg(paths, tmp_path / "avg.ckpt", tmp_path, "device=cuda")
    with pytest.raises(UserValueError, match=r"device=cuda: .*trainer\.accelerator=.*devices"):
        average(cfg)
    cfg = average_cfg(paths, tmp_path / "avg.ckpt", tmp_path, "trainer.devices=2")
    with pytest.raises(UserValueError, match=r"trainer\.devices=2: .*one device"):
        average(cfg)
    assert cfg.trainer.accelerator == "cpu" and not (tmp_path / "avg.ckpt").exists()


def test_the_averaged_checkpoint_is_read_by_eval_and_predict(tmp_path):
    root, _, out = averaged_pair(tmp_path, train=1, test=1, batch_size=8)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    common = [f"ckpt_path={out}", f"data.root={root}", "trainer=cpu", "tta=none"]
    common += ["data.num_workers=0"]
    results = evaluate(
        compose_config([*common, f"output={tmp_path / 'eval.json'}"], config_name="eval")
    )
    assert results["images"] == 12
    csv = predict(compose_config([*common, f"output={tmp_path / 'p.csv'}"], "predict"))
    assert len(csv.read_text().splitlines()) == 13
    assert json.loads((tmp_path / "eval.json").read_text())["acc"] == results["acc"]


@pytest.mark.slow
def test_a_runs_top_k_checkpoints_average_from_the_command_line(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, CLASSES, train=2, val=1, test=0)
    run_dir = tmp_path / "run"
    overrides = ["callbacks=[default,top_k]", "trainer.max_epochs=3", "sched.T_max=3"]
    overrides += ["trainer.limit_train_batches=1"]
    proc = run_train(root, run_dir, *overrides, "callbacks.model_checkpoint.save_top_k=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    top = sorted((run_dir / "checkpoints").glob("epoch*-acc*.ckpt"))
    assert len(top) == 2 and Path(metrics["best_ckpt"]) in top
    accs = {float(p.stem.split("-acc")[1]) for p in top}
    assert round(metrics["best_val_acc"], 4) == max(accs)

    out = tmp_path / "avg.ckpt"
    command = [sys.executable, "-m", "hw1.average", f"ckpt_path=[{','.join(map(str, top))}]"]
    command += [f"output={out}", f"data.root={root}", "data.num_workers=0", "trainer=cpu"]
    command += [f"hydra.run.dir={tmp_path / 'avg_run'}"]
    env = {**os.environ, "HW1_PROGRESS": "count"}  # the count a CI log gets, however short
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BatchNorm statistics from 1/1 batches" in proc.stderr.splitlines()
    assert Classifier.from_checkpoint(out).class_names == CLASSES


def test_a_signal_stops_the_batchnorm_pass_between_batches():
    """R8: hw1.average's pass over the training images stops at a batch on SIGTERM or
    Ctrl-C (Stopped: exit 143 or 130), before the averaged checkpoint is written."""
    batches = [(torch.zeros(1, 3, 4, 4), 0)] * 3
    finish = FinishOnDevice((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with latched("averaging") as latch:
        passed = normalised(batches, finish, torch.device("cpu"), latch)
        next(passed)
        latch.received = signal.SIGINT
        with pytest.raises(Stopped) as stopped:
            next(passed)
    assert stopped.value.code == 130
