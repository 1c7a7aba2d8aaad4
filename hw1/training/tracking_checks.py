"""Before training: whether each configured logger can keep the run, checked while nothing
is built yet, so that a missing package, an unwritable or unreachable MLflow store, or W&B
online without a key stops the run with the key and the URI instead of a traceback at the
first metric (MLflow's client retries a server for minutes; wandb prompts on a terminal).

It also reads the config's logger group (``logger_entries``, ``class_name``) and places a
local MLflow store's files (``local_store``, ``artifact_root``), which the checks need
first; ``hw1.training.tracking`` builds the loggers with the same answers.
"""

from __future__ import annotations

import importlib
import netrc
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from hw1.utils.errors import UserRuntimeError

INSTALL = 'pip install "hw1[track]"'
PROBE_TIMEOUT_S = 5.0
# The package each logger needs beyond Lightning, by the logger's class name.
PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}


# --- the configured loggers -------------------------------------------------------------


def logger_entries(cfg: DictConfig) -> dict[str, DictConfig]:
    """The configured loggers by name (``logger=none`` and ``logger=null``: none)."""
    group = cfg.get("logger") or {}
    return {name: entry for name, entry in group.items() if entry is not None}


def class_name(entry: DictConfig) -> str:
    return str(entry.get("_target_", "")).rsplit(".", 1)[-1]


def require(entry_name: str, entry: DictConfig) -> None:
    """A one-line message naming the extra when a logger's package is not installed."""
    package = PACKAGES.get(class_name(entry))
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError:
        raise UserRuntimeError(
            f"logger={entry_name} needs the {package} package: {INSTALL}"
        ) from None


# --- where a local MLflow store keeps its files -----------------------------------------


def local_store(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (SQLite or plain files), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        return Path(uri[len("sqlite:///") :])
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def artifact_root(entry: DictConfig, uri: str) -> Path:
    """A local store's artifacts: ``artifact_location``, or ``mlartifacts`` beside it."""
    if entry.get("artifact_location"):
        return Path(urlparse(str(entry.artifact_location)).path).absolute()
    store = local_store(uri)
    assert store is not None
    beside = store.parent if urlparse(uri).scheme == "sqlite" else store
    return beside.absolute() / "mlartifacts"


# --- the checks -------------------------------------------------------------------------


def check_stores(cfg: DictConfig) -> None:
    """Before anything is built: every logger's package is installed, each MLflow store is
    reachable and writable, W&B online has a key. Fails with the key and the URI."""
    for name, entry in logger_entries(cfg).items():
        require(name, entry)
        kind = class_name(entry)
        if kind == "MLFlowLogger":
            uri = str(entry.get("tracking_uri") or "")
            what = f"logger.{name}.tracking_uri={uri}"
            if urlparse(uri).scheme in ("http", "https"):
                probe_server(uri, what)
            elif (path := local_store(uri)) is not None:
                check_writable(path, what, is_folder=urlparse(uri).scheme != "sqlite")
                where = f"logger.{name}.artifact_location"
                check_writable(artifact_root(entry, uri), where, is_folder=True)
        elif kind == "WandbLogger" and not entry.get("offline") and not wandb_offline_env():
            check_wandb_key(name)


def check_writable(path: Path, what: str, is_folder: bool = False) -> None:
    """``path`` (a file, or a ``folder``) can be written: its folder exists (made if need
    be) and is writable, and so is the file if it exists."""
    folder = path if is_folder else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserRuntimeError(f"{what}: cannot create {folder}: {e.strerror}") from None
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise UserRuntimeError(f"{what}: {target} is not writable")


def probe_server(uri: str, what: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """An MLflow server must answer its health check within ``timeout`` seconds: MLflow's
    own client retries an unreachable server for minutes, at the first metric."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        reason = f"it answered HTTP {e.code} to /health: is it an MLflow server?"
    except (urllib.error.URLError, OSError) as e:
        reason = f"no answer ({getattr(e, 'reason', e)})"
    raise UserRuntimeError(
        f"{what}: {reason}. Start one (mlflow server --host 127.0.0.1 --port 5000, "
        "README.md), or log to a local store: leave the tracking_uri at its default"
    )


def wandb_offline_env() -> bool:
    return os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")


def check_wandb_key(name: str) -> None:
    """W&B online needs an API key. wandb's own login prompts for one on a terminal and
    fails later elsewhere; this looks where wandb looks (WANDB_API_KEY, ~/.netrc) so that
    the run stops before training instead."""
    if os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc().authenticators(host or ""):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise UserRuntimeError(
        f"logger.{name}.offline=false: no W&B API key (WANDB_API_KEY or `wandb login`). "
        f"Log offline and sync later: logger.{name}.offline=true (the default), then "
        "wandb sync <run dir>/wandb/offline-run-*"
    )
