"""Private set intersection (Diffie-Hellman PSI on Curve25519, hpcflare.tabular.psi): N rounds pass every
site's encrypted ID list around the ring until it carries every key, then the server intersects the lists
and tells each site its positions (round N+1). Every site must take part: a lost site fails the job.
Result: ``models/psi.json`` (list sizes and the intersection's size; the IDs stay at the sites).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError, RoundFailedError, UpdateRejectedError
from hpcflare.fileio import atomic_write_json
from hpcflare.strategy.api import (
    AnyLength,
    ClientUpdate,
    Params,
    PassThroughAggregator,
    RoundPlan,
    Strategy,
    TaskKind,
)
from hpcflare.tabular.psi import HITS_PREFIX, LIST_PREFIX, POINT, intersect, list_for


class PSI(Strategy):
    name = "psi"
    supports_relays = False

    def __init__(self, salt: str, max_ids: int = 50_000_000) -> None:
        self.salt, self.max_ids = str(salt), int(max_ids)
        self.ring: list[str] = []
        self.lists: dict[str, np.ndarray] = {}
        self.hits: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.step = 0
        self.output: Path | None = None

    def attach(self, job_root: Path) -> None:
        self.output = Path(job_root) / "models" / "psi.json"

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        if not self.ring:
            self.ring = list(live)
        if round_num > len(self.ring) + 1:
            return RoundPlan(skip=True)
        gone = [s for s in self.ring if s not in live]
        if gone:
            raise RoundFailedError(
                f"PSI needs every site of its ring, {gone} left; each list carries every site's "
                "key, so the intersection cannot be finished without them: run the job again"
            )
        self.step = round_num - 1
        if self.step == len(self.ring):
            self.hits = intersect(self.lists)
            model = {HITS_PREFIX + s: h if h.size else np.full(1, -1, np.int64) for s, h in self.hits.items()}
        else:
            model = {LIST_PREFIX + s: v for s, v in self.lists.items()} or {"psi": np.zeros(1, np.uint8)}
        return RoundPlan(task=TaskKind.TRAIN, targets=list(self.ring), model=model, aggregate=False)

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        phase = "result" if self.step == len(self.ring) else "encrypt"
        return {"psi": {"phase": phase, "step": self.step, "ring": self.ring, "salt": self.salt}}

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        if self.step == len(self.ring):
            return {"count": np.zeros(1, np.int64)}
        return {"items": AnyLength(np.dtype(np.uint8), self.max_ids * POINT)}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> PassThroughAggregator:
        return _PsiAggregator(global_params, self)

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        if self.step == len(self.ring) and self.output is not None:
            sizes = {s: int(np.asarray(v).size // POINT) for s, v in self.lists.items()}
            size = len(next(iter(self.hits.values()))) if self.hits else 0
            atomic_write_json(
                self.output,
                {
                    "sites": self.ring,
                    "list_sizes": sizes,
                    "intersection_size": size,
                    "confirmed_by": sorted(s for s, c in self.counts.items() if c == size),
                },
                indent=1,
            )

    def state_dict(self) -> Params:
        return {"psi_step": np.array([self.step], np.int64)}  # marks the checkpoint: see load_state_dict

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        raise ConfigError(
            "a PSI job cannot resume from a checkpoint: each site's secret key lived only in its "
            "process and a restarted site draws a new one, so the lists keyed so far could no longer "
            "be intersected (the result would be silently wrong); run the PSI job again"
        )


class _PsiAggregator(PassThroughAggregator):
    """Keeps each site's re-encrypted list under the list's owner (or, last round, each site's count)."""

    def __init__(self, global_params: Mapping[str, np.ndarray], strategy: PSI) -> None:
        super().__init__(global_params)
        self.strategy = strategy

    def add(self, update: ClientUpdate) -> None:
        psi = self.strategy
        if psi.step == len(psi.ring):
            count = int(np.asarray(update.params["count"])[0])
            expected = len(psi.hits.get(update.site, ()))
            if count != expected:
                raise UpdateRejectedError(
                    f"{update.site} reports {count} intersecting IDs, the server found {expected}"
                )
            psi.counts[update.site] = count
        else:
            items = np.asarray(update.params.get("items", np.zeros(0, np.uint8)), np.uint8)
            owner = list_for(update.site, psi.ring, psi.step)
            if items.size % POINT:
                raise UpdateRejectedError(
                    f"{update.site}: a PSI list of {items.size} bytes is not whole points"
                )
            if psi.step > 0 and items.size != psi.lists[owner].size:
                raise UpdateRejectedError(
                    f"{update.site} returned {items.size // POINT} points for {owner}'s list of "
                    f"{psi.lists[owner].size // POINT}; a site may not add or drop IDs"
                )
            psi.lists[owner] = items.copy()
        self._count += 1
