"""XGBoost histogram-based training (horizontal or vertical) on XGBoost's own federated collective.

The server rank starts XGBoost's federated tracker (hpcflare.tabular.xgb_tracker, a child process) for the
sites that are live at round 1 and sends each its rank and the tracker's address in the task meta
(``meta["xgboost"]``). The sites run ``xgb.train`` inside ``hpcflare.client.xgboost.federated(model)``: every
boosting round XGBoost allreduces gradient histograms (horizontal: the union of rows; vertical,
``data_split_mode=1``: split candidates across columns, the label owner at rank 0), so the trees equal
centralized training up to floating-point and quantile-sketch merging. Each site then sends the final model;
the server keeps the label owner's (rank 0), checked like any upload. One hpcflare round = the whole training.

With mutual TLS the tracker gets a certificate of its own for the server's host, issued by a one-job CA whose
certificate reaches the sites in the (authenticated) task meta; it accepts only clients whose certificates the
project's CA signed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError, UpdateRejectedError
from hpcflare.fileio import atomic_write
from hpcflare.security.certs import issue, new_ca, pem_cert, pem_key
from hpcflare.strategy.api import (
    Aggregator,
    AnyLength,
    ClientUpdate,
    Params,
    RoundPlan,
    ServerContext,
    Strategy,
    TaskKind,
)
from hpcflare.tabular import xgb_model
from hpcflare.tabular.xgb_tracker import TLS_FILES, TrackerProcess


class XGBHistogram(Strategy):
    """``label_owner``: the site holding the labels (vertical jobs), given rank 0; None for horizontal jobs.
    ``collective_timeout``: seconds XGBoost's tracker and workers wait for each other (a dead site fails the
    round by then). ``tracker_start_timeout``: seconds the server waits for the tracker to listen."""

    name = "xgb_histogram"
    supports_relays = False  # XGBoost's collective connects every site to the tracker

    def __init__(
        self,
        split: str = "horizontal",
        label_owner: str | None = None,
        collective_timeout: int = 300,
        tracker_start_timeout: float = 60.0,
        max_model_bytes: int | None = None,
    ) -> None:
        if split not in ("horizontal", "vertical"):
            raise ConfigError(f"xgb_histogram split must be 'horizontal' or 'vertical', got {split!r}")
        if split == "vertical" and not label_owner:
            raise ConfigError("a vertical XGBoost job needs label_owner= (the site that holds the labels)")
        self.split, self.label_owner = split, label_owner
        self.collective_timeout, self.tracker_start_timeout = (
            int(collective_timeout),
            float(tracker_start_timeout),
        )
        self.max_model_bytes = max_model_bytes
        self.context: ServerContext | None = None
        self.tracker: TrackerProcess | None = None
        self.meta: dict[str, Any] = {}

    def start_services(self, context: ServerContext) -> None:
        self.context = context

    def stop_services(self) -> None:
        if self.tracker is not None:
            self.tracker.stop()
            self.tracker = None

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        if round_num > 1:
            return RoundPlan(skip=True)  # the whole boosting ran in round 1
        if self.context is None:
            raise ConfigError("xgb_histogram runs on a server rank (start_services was not called)")
        if self.label_owner is not None and self.label_owner not in live:
            raise ConfigError(
                f"label owner {self.label_owner!r} is not among the live sites {live}; a vertical job "
                "cannot train without it"
            )
        world = ([self.label_owner] if self.label_owner else []) + [s for s in live if s != self.label_owner]
        self.stop_services()
        tls_dir, ca_pem = self._tls_files() if self.context.kit_dir is not None else (None, None)
        self.tracker = TrackerProcess(
            len(world), self.collective_timeout, self.tracker_start_timeout, tls_dir
        )
        address = f"{self.context.host}:{self.tracker.port}"
        self.context.log.info(
            "xgboost_tracker",
            f"XGBoost federated tracker listening on {address} for "
            f"{len(world)} sites ({self.split}" + (", TLS" if tls_dir else "") + ")",
            address=address,
            world=world,
            split=self.split,
            tls=tls_dir is not None,
        )
        self.meta = {
            "mode": "histogram",
            "split": self.split,
            "address": address,
            "world_size": len(world),
            "ranks": {site: rank for rank, site in enumerate(world)},
            "label_owner": self.label_owner,
            "timeout": self.collective_timeout,
            "tracker_ca": ca_pem,
        }
        return RoundPlan(task=TaskKind.TRAIN, targets=world)

    def _tls_files(self) -> tuple[Path, str]:
        """The tracker's key and certificate for this host (from a one-job CA) and the project CA for clients."""
        assert self.context is not None
        folder = Path(self.context.job_root) / "xgboost-tracker"
        folder.mkdir(mode=0o700, exist_ok=True)
        ca_key, ca_cert = new_ca("xgboost-tracker", valid_days=7)
        key, cert = issue(
            ca_key,
            ca_cert,
            "xgboost-tracker",
            hosts=[self.context.host, "localhost", "127.0.0.1"],
            valid_days=7,
        )
        for name, data in zip(
            TLS_FILES,
            (pem_key(key), pem_cert(cert), (Path(self.context.kit_dir) / "rootCA.pem").read_bytes()),
        ):
            atomic_write(folder / name, data, mode=0o600)
        os.chmod(folder, 0o700)
        return folder, pem_cert(ca_cert).decode()

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        return {"xgboost": dict(self.meta)}

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        self.stop_services()

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        return {xgb_model.MODEL_KEY: AnyLength(np.dtype(np.uint8), self.max_model_bytes)}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _KeepRankZero(global_params, self.meta.get("ranks", {}))


class _KeepRankZero(Aggregator):
    """Every site ends with the same trees; keep the model of the lowest rank that answered (the label owner
    in a vertical job), after checking it."""

    def __init__(self, global_params: Mapping[str, np.ndarray], ranks: dict[str, int]) -> None:
        self._global, self._ranks = global_params, ranks
        self._best: tuple[int, np.ndarray] | None = None
        self._n = 0

    @property
    def count(self) -> int:
        return self._n

    def add(self, update: ClientUpdate) -> None:
        if xgb_model.MODEL_KEY not in update.params:
            raise UpdateRejectedError(f"{update.site} sent no {xgb_model.MODEL_KEY!r} tensor")
        data = np.asarray(update.params[xgb_model.MODEL_KEY], np.uint8)
        xgb_model.parse(data.tobytes(), update.site)
        rank = self._ranks.get(update.site, len(self._ranks))
        if self._best is None or rank < self._best[0]:
            self._best = (rank, data.copy())
        self._n += 1

    def result(self) -> Params:
        if self._best is None:
            return dict(self._global)
        return {xgb_model.MODEL_KEY: self._best[1]}
