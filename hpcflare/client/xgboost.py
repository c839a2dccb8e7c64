"""Site side of XGBoost jobs: join XGBoost's federated collective for a histogram task, and move boosters in
and out of ``FLModel.params`` (JSON in a uint8 tensor, never pickle).

    with hpcflare.client.xgboost.federated(model) as rank:      # histogram / vertical jobs
        booster = xgb.train(params, dtrain, num_boost_round)
    flare.send(flare.FLModel(params=hpcflare.client.xgboost.to_params(booster)))
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.client import api as flare
from hpcflare.errors import CollectiveLostError, ConfigError
from hpcflare.tabular import xgb_model

MODEL_KEY = xgb_model.MODEL_KEY
COLLECTIVE_LOST = ("Allreduce RPC failed", "Allgather RPC failed", "Broadcast RPC failed", "Socket closed")
"""XGBoost error text that says its federated collective lost a member (not this site's own fault)."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip(" -") for line in str(exc).splitlines() if "RPC failed" in line or "Socket" in line]
    return (lines[0] if lines else str(exc).splitlines()[0])[:200]


def to_params(booster: Any) -> dict[str, np.ndarray]:
    """A booster as FLModel params: its JSON in one uint8 tensor."""
    return {MODEL_KEY: xgb_model.to_tensor(bytes(booster.save_raw("json")))}


def from_params(params: dict[str, Any]) -> Any:
    """The booster in FLModel params, or None before the first round (the global model has no trees yet)."""
    import xgboost as xgb

    tensor = params.get(MODEL_KEY) if params else None
    if tensor is None or xgb_model.is_empty(np.asarray(tensor)):
        return None
    return xgb.Booster(model_file=bytearray(xgb_model.from_tensor(np.asarray(tensor))))


def collective_args(model: Any, workdir: str | Path) -> dict[str, Any]:
    """XGBoost's ``CommunicatorContext`` arguments for this site and task (meta["xgboost"] from the server)."""
    info = (model.meta or {}).get("xgboost") or {}
    site = flare.get_site_name()
    if info.get("mode") != "histogram":
        raise ConfigError(
            "this task is not an XGBoost histogram task (no meta['xgboost'] with mode 'histogram'); "
            "use XGBHistogramRecipe / XGBVerticalRecipe on the server"
        )
    if site not in info.get("ranks", {}):
        raise ConfigError(f"{site} has no rank in this XGBoost collective (it registered after it formed)")
    args: dict[str, Any] = {
        "dmlc_communicator": "federated",
        "federated_server_address": info["address"],
        "federated_world_size": int(info["world_size"]),
        "federated_rank": int(info["ranks"][site]),
    }
    if info.get("tracker_ca"):
        kit = _site_kit()
        ca = Path(workdir) / "tracker-ca.pem"
        ca.write_text(info["tracker_ca"])
        args.update(
            federated_server_cert_path=str(ca),
            federated_client_key_path=str(kit / "key.pem"),
            federated_client_cert_path=str(kit / "cert.pem"),
        )
    return args


def _site_kit() -> Path:
    """This site's kit (a virtual client without one has its client rank's: same project CA, same process)."""
    agent = flare._ctx(None).agent
    if agent.kit is None:
        raise ConfigError(
            f"{agent.site} has no startup kit, but the XGBoost collective runs over mutual TLS: "
            "provision one per site (`hpcflare provision PROJECT_DIR --add SITE`)"
        )
    return Path(agent.kit.path)


@contextlib.contextmanager
def federated(model: Any) -> Iterator[int]:
    """Inside: this site is rank ``N`` of XGBoost's federated collective for the task's ``model``; xgb.train
    allreduces histograms through the server rank's tracker. Yields the rank (0 = the label owner)."""
    from xgboost import collective

    with tempfile.TemporaryDirectory(prefix="hpcflare-xgb-") as workdir:
        args = collective_args(model, workdir)
        with collective.CommunicatorContext(**args):
            try:
                yield int(args["federated_rank"])
            except Exception as exc:
                if type(exc).__name__ == "XGBoostError" and any(m in str(exc) for m in COLLECTIVE_LOST):
                    raise CollectiveLostError(
                        f"{flare.get_site_name()}: XGBoost's collective lost a member mid-boosting "
                        f"({_first_line(exc)}); the job's server names which"
                    ) from None
                raise
