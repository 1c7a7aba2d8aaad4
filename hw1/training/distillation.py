"""Distilling an ensemble into one model (``python -m hw1.distill``): the teachers loaded
from their checkpoints and checked against the student's data and preprocessing, the
student's size checked against the competition's limit before anything trains, and the
training run that hw1.train runs, with the student.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from hw1 import PARAM_LIMIT
from hw1.inference.predictor import checkpoint_paths, load_ensemble
from hw1.models.classifier import Classifier
from hw1.models.student import DistilledClassifier
from hw1.training.run import ModelMaker, train
from hw1.utils.errors import UserValueError

log = logging.getLogger(__name__)


def check_param_limit(model: Classifier, recipe: str) -> int:
    """The student's parameter count, refused at the competition's limit or over."""
    params = sum(p.numel() for p in model.parameters())
    if params >= PARAM_LIMIT:
        raise UserValueError(
            f"the student ({recipe}) has {params:,} parameters, over the limit of "
            f"{PARAM_LIMIT:,}: distil into a smaller model (recipe=..., model=resnet50)"
        )
    return params


def teachers_for(
    cfg: DictConfig, class_names: list[str], preprocess: dict[str, Any]
) -> list[Classifier]:
    """The teachers of ``cfg.teachers``, refused unless they know the data's classes, in
    its order, and normalise images as the student does."""
    paths = checkpoint_paths(cfg.teachers) if cfg.teachers else []
    if not paths:
        raise UserValueError("teachers is required: 'teachers=[A.ckpt,B.ckpt,C.ckpt]'")
    teachers = load_ensemble(paths)
    for path, teacher in zip(paths, teachers, strict=True):
        if teacher.class_names != class_names:
            raise UserValueError(
                f"teachers: {path} was trained on other classes than data.root="
                f"{cfg.data.root} has ({len(teacher.class_names)} vs {len(class_names)}, or "
                "in another order): distil on the data the teachers learnt"
            )
        theirs = teacher.hparams.preprocess
        if (theirs["mean"], theirs["std"]) != (preprocess["mean"], preprocess["std"]):
            raise UserValueError(
                f"teachers: {path} normalises images with mean {theirs['mean']} std "
                f"{theirs['std']}, the student with {preprocess['mean']} {preprocess['std']}: "
                "pick a student model whose weights normalise as the teachers'"
            )
        if theirs["crop"] != preprocess["crop"]:
            log.warning(
                "teacher %s was evaluated at %d px, the student trains at %d px: the "
                "teacher sees the student's batches",
                path,
                theirs["crop"],
                preprocess["crop"],
            )
    return teachers


def student_maker(cfg: DictConfig) -> ModelMaker:
    """hw1.train's ``make_model``: the student, its size checked before its teachers load."""

    def make(
        cfg_: DictConfig, class_names: list[str], preprocess: dict[str, Any]
    ) -> DistilledClassifier:
        student = DistilledClassifier.from_config(cfg_, class_names, preprocess)
        params = check_param_limit(student, cfg.id or cfg.model.arch)
        teachers = teachers_for(cfg, class_names, preprocess)
        student.set_teachers(teachers, cfg.distill.temperature, cfg.distill.alpha)
        log.info(
            "distilling %d teachers into %s (%s parameters), T=%s alpha=%s",
            len(teachers),
            cfg.id or cfg.model.arch,
            f"{params:,}",
            cfg.distill.temperature,
            cfg.distill.alpha,
        )
        return student

    return make


def distill(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, make_model=student_maker(cfg))
