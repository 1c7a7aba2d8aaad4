from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import TINY, datamodule, make_hw1_folder, run_train
from test_predict import tiny_model
from torch.nn import functional as F

import hw1.training.distillation
from hw1.models.classifier import Classifier
from hw1.models.student import DistilledClassifier, distillation_loss
from hw1.training.distillation import student_maker
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError

CLASSES = [str(i) for i in range(12)]


def test_the_loss_is_alpha_t2_kl_plus_the_rest_of_the_label_loss_by_hand():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    teachers = [
        torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, 2.0]]),
        torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]]),
    ]
    y = torch.tensor([0, 2])
    T, alpha = 2.0, 0.3
    p = sum((t / T).softmax(dim=1) for t in teachers) / 2
    q = (student / T).softmax(dim=1)
    kl = (p * (p.log() - q.log())).sum(dim=1).mean()
    ce = -(student.log_softmax(dim=1)[torch.arange(2), y]).mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    loss, got_kl = distillation_loss(student, p, F.cross_entropy(student, y), T, alpha)
    torch.testing.assert_close(got_kl, kl)
    torch.testing.assert_close(loss, expected)


def saved_teacher(path, seed: int) -> str:
    model = tiny_model(seed)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


class TeacherProbe(L.Callback):
    """Records, at every training step, whether each teacher is in eval mode and has no
    gradient, after the backward pass."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        for t in module.teachers:
            no_grad = all(p.grad is None and not p.requires_grad for p in t.parameters())
            all_eval = not any(m.training for m in t.modules())
            self.seen.append((no_grad, all_eval))


def test_teachers_get_no_gradient_stay_in_eval_mode_and_stay_out_of_the_checkpoint(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, CLASSES, train=2, val=1, test=0)
    teachers = [saved_teacher(tmp_path / f"t{s}.ckpt", s) for s in range(2)]
    cfg = compose_config(
        [*TINY, f"teachers=[{','.join(teachers)}]", "distill.alpha=0.7"], "distill"
    )
    data = datamodule(root, batch_size=8)
    data.validate()
    student = student_maker(cfg)(cfg, data.class_names, data.eval_spec.to_dict())
    assert isinstance(student, DistilledClassifier) and len(student.teachers) == 2
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in student.teachers]
    probe = TeacherProbe()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        limit_val_batches=0, callbacks=[probe], enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(student, datamodule=data)
    assert probe.seen and all(no_grad and evals for no_grad, evals in probe.seen)
    for t, state in zip(student.teachers, before, strict=True):
        for k, v in t.state_dict().items():
            assert torch.equal(v, state[k]), k  # not even BatchNorm statistics move
    # the student's parameter count and checkpoint are its own
    assert sum(p.numel() for p in student.parameters()) == sum(
        p.numel() for p in tiny_model().backbone.parameters()
    ) + sum(p.numel() for p in student.head.parameters())
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    loaded = Classifier.from_checkpoint(tmp_path / "student.ckpt")
    assert type(loaded) is Classifier and loaded.class_names == data.class_names
    assert not any(k.startswith("teachers") for k in loaded.state_dict())


def test_a_student_over_the_parameter_limit_is_refused_before_its_teachers_load(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(hw1.training.distillation, "PARAM_LIMIT", 1_000_000)  # resnet18 has 11 M
    cfg = compose_config([*TINY, f"teachers=[{tmp_path / 'missing.ckpt'}]"], "distill")
    with pytest.raises(UserValueError, match=r"has 11,\d+,\d+ parameters, over the limit"):
        student_maker(cfg)(cfg, CLASSES, tiny_model().hparams.preprocess)


def test_teachers_of_other_classes_are_refused_naming_the_file(tmp_path):
    teacher = saved_teacher(tmp_path / "t.ckpt", 0)
    cfg = compose_config([*TINY, f"teachers=[{teacher}]"], "distill")
    others = [f"c{i}" for i in range(12)]
    with pytest.raises(UserValueError, match=r"t\.ckpt was trained on other classes"):
        student_maker(cfg)(cfg, others, tiny_model().hparams.preprocess)


@pytest.mark.slow
def test_hw1_distill_writes_a_run_directory_that_predicts(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, CLASSES, train=2, val=1, test=1)
    teachers = [saved_teacher(tmp_path / f"t{s}.ckpt", s) for s in range(2)]
    run_dir = tmp_path / "run"
    proc = run_train(
        root, run_dir, f"teachers=[{','.join(teachers)}]", "trainer.max_epochs=1",
        "sched.T_max=1", module="hw1.distill",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["params"] < 12_000_000 and metrics["prediction_csv"]
    assert Classifier.from_checkpoint(metrics["best_ckpt"]).class_names == CLASSES
