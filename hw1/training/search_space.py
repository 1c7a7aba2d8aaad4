"""Search spaces of ``python -m hw1.tune`` (conf/search/*.yaml): distributions over config
keys, each sampled by an Optuna trial and handed to training as a command-line override.

A distribution is a mapping with a ``type``, at the config key it sets, nested or dotted::

    params:
      optim.lr: {type: float, low: 1e-5, high: 1e-3, log: true}
      head: {type: categorical, choices: [v0, v1, v2]}     # a config group: head=v1
      data: {batch_size: {type: int, low: 16, high: 64, step: 16}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from hw1.utils.errors import UserValueError

# The arguments each type takes, besides ``type``: those of Optuna's suggest_float,
# suggest_int and suggest_categorical.
ARGUMENTS = {
    "float": ({"low", "high"}, {"log", "step"}),
    "int": ({"low", "high"}, {"log", "step"}),
    "categorical": ({"choices"}, set()),
}


def distributions(params: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``{"config.key": {"type": ..., ...}}`` from the nested or dotted ``params`` of a search
    space; ``where`` names it in errors (e.g. ``search=demo``)."""
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping) and "type" in node:
            found[key] = checked(key, dict(node), where)
        elif isinstance(node, Mapping) and node:
            for name, child in node.items():
                walk(child, f"{key}.{name}" if key else str(name))
        else:
            raise UserValueError(
                f"{where}: params.{key} is {node!r}, not a distribution; write e.g. "
                f"{{type: float, low: 1e-5, high: 1e-3, log: true}} or "
                f"{{type: categorical, choices: [a, b]}}"
            )

    walk(params or {}, "")
    if not found:
        raise UserValueError(f"{where}: no params to search; list some under params:")
    return found


def checked(key: str, spec: dict[str, Any], where: str) -> dict[str, Any]:
    kind = spec["type"]
    if kind not in ARGUMENTS:
        raise UserValueError(
            f"{where}: params.{key}.type is {kind!r}; one of {', '.join(ARGUMENTS)}"
        )
    required, optional = ARGUMENTS[kind]
    given = set(spec) - {"type"}
    if missing := required - given:
        raise UserValueError(f"{where}: params.{key} ({kind}) needs {', '.join(sorted(missing))}")
    if unknown := given - required - optional:
        allowed = ", ".join(sorted(required | optional))
        raise UserValueError(
            f"{where}: params.{key} ({kind}) has {', '.join(sorted(unknown))}; it takes {allowed}"
        )
    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserValueError(f"{where}: params.{key}.choices must be a non-empty list")
        if bad := [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]:
            raise UserValueError(
                f"{where}: params.{key}.choices holds {bad[0]!r}; choices are single values "
                "(numbers, strings, true/false, null), as an override on the command line sets"
            )
    elif not spec["low"] < spec["high"]:
        raise UserValueError(f"{where}: params.{key} needs low < high")
    return spec


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> list[str]:
    """The trial's sample of each distribution, as ``key=value`` overrides."""
    overrides = []
    for key, spec in space.items():
        args = {k: v for k, v in spec.items() if k != "type"}
        if spec["type"] == "float":
            value = trial.suggest_float(key, **args)
        elif spec["type"] == "int":
            value = trial.suggest_int(key, **args)
        else:
            value = trial.suggest_categorical(key, args["choices"])
        overrides.append(f"{key}={override_value(value)}")
    return overrides


def examples(space: dict[str, dict[str, Any]]) -> list[str]:
    """An override for every distribution (its low end or first choice): composing them
    checks that each key exists before any trial trains."""
    return [
        f"{key}={override_value(spec['choices'][0] if 'choices' in spec else spec['low'])}"
        for key, spec in space.items()
    ]


def override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
