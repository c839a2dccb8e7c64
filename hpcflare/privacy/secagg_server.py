"""Secure aggregation, server side: route the round's keys and encrypted shares, sum masked updates, and
remove what is left of the masks with the survivors' shares (Bonawitz et al. 2017; SecAgg+ partner graphs).

Per round: (1) ``keys``: every site sends two X25519 public keys; the server answers with its partners'
keys once all the round's live sites sent theirs (or at setup_timeout) -> U1. (2) ``shares``: each site
Shamir-shares its self-mask seed and its masking private key among its partners, encrypted for each
partner; the server routes them -> U2. (3) Sites upload masked updates as ordinary results (relays add them
modulo 2^64). (4) ``unmask``: after the round closes, the survivors U3 reveal shares of the self-mask seeds
of U3 and of the masking keys of U2 - U3 (never both for one site); the server rebuilds them, subtracts the
self masks and the survivors' masks with the dropped sites, and decodes the weighted mean update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.privacy.api import PrivacySpec, PrivateStrategy
from hpcflare.privacy.masking import RING, MaskStream, agree, decode, mask_blocks, neighbours, pair_sign
from hpcflare.privacy.shamir import ShamirError, combine
from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, ClientUpdate, Params, RoundPlan, ServerContext, Strategy
from hpcflare.tensors import acc_dtype, blocks_of

WEIGHT = "__secagg_weight__"
"""The masked upload's extra tensor: the site's weight in fixed point, summed like the update."""
MASK_PURPOSE = b"hpcflare-secagg-mask"
SHARE_PURPOSE = b"hpcflare-secagg-share"
MAX_SHARE_MESSAGE = 1024
"""Largest encrypted share bundle accepted from one site for one partner (two 66-byte shares + framing)."""


class Ring:
    """What a masked tensor must look like: the model tensor's shape in uint64; relays' partials likewise."""

    keeps_partials = True

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.dtype = shape, np.dtype(RING)


def mask_order(names: list[str]) -> list[str]:
    """The order in which every mask stream is spent over the tensors: the same on sites and server."""
    return sorted(n for n in names if n != WEIGHT) + [WEIGHT]


def mask_context(job_id: str, round_num: int, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    return f"{job_id}|{round_num}|{low}|{high}".encode()


class _RoundState:
    def __init__(self, number: int, expected: set[str]) -> None:
        self.number, self.expected = number, expected
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        self.u1: list[str] | None = None
        self.graph: dict[str, list[str]] = {}
        self.threshold = 0
        self.shares: dict[str, dict[str, bytes]] = {}
        self.u2: list[str] | None = None
        self.folded: set[str] = set()
        self.u3: list[str] | None = None
        self.reveals: dict[str, dict[str, dict[str, bytes]]] = {}
        self.started: dict[str, float] = {}
        self.failed = ""


class SecAgg(PrivateStrategy):
    def __init__(self, inner: Strategy, spec: PrivacySpec, job_id: str) -> None:
        super().__init__(inner, spec)
        self.job_id = job_id
        self._cv = threading.Condition()
        self._state: _RoundState | None = None
        self.context: Any = None

    def start_services(self, context: ServerContext) -> None:
        super().start_services(context)
        if self.spec.allow_weak_threshold:
            context.log.warning(
                "secagg_weak_threshold",
                f"privacy.allow_weak_threshold is set (threshold {self.spec.threshold:g}): a server that lies about "
                "who dropped out could unmask a site's update; this job trusts its server to report dropouts",
                threshold=self.spec.threshold,
            )

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        plan = self.inner.plan_round(round_num, total_rounds, live)
        with self._cv:
            self._state = _RoundState(round_num, set(plan.targets if plan.targets is not None else live))
        return plan

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        return {**{k: Ring(tuple(v.shape)) for k, v in global_params.items()}, WEIGHT: Ring((1,))}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        inner = self.inner_aggregator(global_params)
        if not isinstance(inner, WeightedMeanAggregator):
            raise errors.ConfigError(
                f"secure aggregation needs a weighted-mean strategy, not {self.inner.name!r}"
            )
        return MaskedSumAggregator(global_params, inner, self)

    # ------------------------------------------------------------------ the exchange (server rank only)
    def _live(self) -> set[str]:
        return set(self.context.live()) if self.context is not None else set()

    def exchange(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = {
            "keys": self._keys,
            "shares": self._shares,
            "unmask": self._unmask,
            "reveal": self._reveal,
        }.get(op)  # type: ignore[arg-type]
        if handler is None:
            raise errors.MalformedMessageError(f"secure aggregation: unknown op {op!r:.20}")
        with self._cv:
            st = self._state
            if st is None or request.get("round") != st.number:
                raise errors.StaleTaskError(
                    f"secure aggregation for round {request.get('round')!r:.10} is not open"
                )
            if site not in st.expected:
                raise errors.UpdateRejectedError(f"{site} is not one of round {st.number}'s sites")
            if st.failed:
                raise errors.UpdateRejectedError(st.failed)
            return handler(st, site, request)

    def _keys(self, st: _RoundState, site: str, request: dict[str, Any]) -> dict[str, Any]:
        if st.u1 is None and site not in st.keys:
            c, s = request.get("c"), request.get("s")
            if not (isinstance(c, bytes) and isinstance(s, bytes) and len(c) == 32 == len(s)) or c == s:
                raise errors.MalformedMessageError(
                    "secure aggregation keys: two distinct 32-byte X25519 public keys"
                )
            st.keys[site] = (c, s)
            st.started.setdefault("keys", time.monotonic())
        if st.u1 is None and self._phase_over(st, "keys", set(st.keys), st.expected):
            st.u1 = sorted(st.keys)
            if len(st.u1) < 2:
                st.failed = (
                    f"round {st.number}: only {len(st.u1)} site sent keys for secure aggregation; it needs "
                    "at least 2 (one site's update cannot be hidden in a sum)"
                )
                raise errors.UpdateRejectedError(st.failed)
            k = self.spec.partners(len(st.u1))
            st.graph = neighbours(st.u1, k, f"{self.job_id}|{st.number}")
            st.threshold = self.spec.shares_needed(len(st.graph[st.u1[0]]) + 1)
        if st.u1 is None:
            return {"status": "wait"}
        if site not in st.u1:
            raise errors.StaleTaskError(
                f"{site} sent its keys after round {st.number}'s key phase closed "
                f"(privacy.setup_timeout={self.spec.setup_timeout:g}s)"
            )
        partners = st.graph[site]
        return {
            "status": "ok",
            "sites": st.u1,
            "partners": partners,
            "threshold": st.threshold,
            "keys": {p: [st.keys[p][0], st.keys[p][1]] for p in partners},
        }

    def _shares(self, st: _RoundState, site: str, request: dict[str, Any]) -> dict[str, Any]:
        if st.u1 is None or site not in st.u1:
            raise errors.MalformedMessageError(f"{site} sent shares before taking part in the key phase")
        if st.u2 is None and site not in st.shares:
            shares = request.get("shares")
            if (
                not isinstance(shares, dict)
                or set(shares) != set(st.graph[site])
                or any(not isinstance(v, bytes) or len(v) > MAX_SHARE_MESSAGE for v in shares.values())
            ):
                raise errors.MalformedMessageError(
                    f"{site}'s shares must be one encrypted bundle per partner "
                    f"({len(st.graph[site])}), each at most {MAX_SHARE_MESSAGE} bytes"
                )
            st.shares[site] = shares
            st.started.setdefault("shares", time.monotonic())
        if st.u2 is None and self._phase_over(st, "shares", set(st.shares), set(st.u1)):
            st.u2 = sorted(st.shares)
        if st.u2 is None:
            return {"status": "wait"}
        if site not in st.u2:
            raise errors.StaleTaskError(
                f"{site}'s shares arrived after round {st.number}'s share phase closed"
            )
        return {
            "status": "ok",
            "sites": st.u2,
            "shares": {p: st.shares[p][site] for p in st.graph[site] if p in st.shares},
        }

    def _phase_over(self, st: _RoundState, phase: str, arrived: set[str], expected: set[str]) -> bool:
        waiting = (expected & self._live()) - arrived
        return (
            not waiting
            or time.monotonic() - st.started.get(phase, time.monotonic()) >= self.spec.setup_timeout
        )

    def _unmask(self, st: _RoundState, site: str, request: dict[str, Any]) -> dict[str, Any]:
        if st.u3 is None:
            return {"status": "wait"}
        if site not in st.u3:
            raise errors.StaleTaskError(f"{site}'s masked update is not part of round {st.number}'s sum")
        return {"status": "ok", "survivors": st.u3, "dropped": sorted(set(st.u2 or []) - set(st.u3))}

    def _reveal(self, st: _RoundState, site: str, request: dict[str, Any]) -> dict[str, Any]:
        if st.u3 is None or site not in st.u3 or site in st.reveals:
            raise errors.MalformedMessageError(f"{site}: shares revealed out of turn")
        dropped = set(st.u2 or []) - set(st.u3)
        holders_of = set(st.graph[site]) | {site}
        b, s = request.get("b"), request.get("s")
        if (
            not isinstance(b, dict)
            or not isinstance(s, dict)
            or set(b) - (holders_of & set(st.u3))
            or set(s) - (holders_of & dropped)
            or set(b) & set(s)
            or any(not isinstance(v, bytes) for v in [*b.values(), *s.values()])
        ):
            raise errors.MalformedMessageError(f"{site}'s revealed shares do not match the round's survivors")
        st.reveals[site] = {"b": b, "s": s}
        self._cv.notify_all()
        return {"status": "ok"}

    # ------------------------------------------------------------------ what the aggregator needs
    def admit(self, sites: list[str]) -> None:
        """Sites whose masked updates are about to be summed must have masked with U2 (server rank only)."""
        with self._cv:
            st = self._state
            if st is None or self.context is None:
                return  # a relay: the server checks
            strangers = [s for s in sites if st.u2 is None or s not in st.u2]
            if strangers:
                raise errors.UpdateRejectedError(
                    f"masked update(s) from {strangers[:5]} which did not complete round "
                    f"{st.number}'s share phase: their masks cannot cancel"
                )
            st.folded.update(sites)

    def recovered_masks(
        self, names: list[str], sizes: dict[str, int]
    ) -> Iterator[tuple[str, Iterator[tuple[int, np.ndarray]]]]:
        """After the round: ask the survivors for their shares, rebuild the secrets, and yield per tensor (in
        mask order) blocks of the total mask left in the sum (to subtract)."""
        st = self._await_reveals()
        assert st.u2 is not None and st.u3 is not None
        position = {s: i + 1 for i, s in enumerate(st.u1 or [])}
        dropped = sorted(set(st.u2) - set(st.u3))
        streams: list[tuple[int, MaskStream]] = []
        for j in st.u3:
            seed = self._rebuild(st, j, "b", position)
            streams.append((1, MaskStream(seed)))
        for k in dropped:
            key = self._rebuild(st, k, "s", position)
            for j in st.graph[k]:
                if j in st.u3:
                    seed = agree(key, st.keys[j][1], MASK_PURPOSE, mask_context(self.job_id, st.number, j, k))
                    streams.append((pair_sign(j, k), MaskStream(seed)))
        for name in names:
            yield name, mask_blocks(streams, sizes[name])

    def _await_reveals(self) -> _RoundState:
        with self._cv:
            st = self._state
            assert st is not None
            st.u3 = sorted(st.folded)
            if len(st.u3) < st.threshold:
                missing = sorted(set(st.u2 or st.u1 or []) - set(st.u3))
                st.failed = (
                    (f"{', '.join(missing[:10])} shared keys but sent no masked update; " if missing else "")
                    + f"round {st.number}: only {len(st.u3)} masked update(s) arrived, fewer than the "
                    f"{st.threshold} shares needed to remove the masks (privacy.threshold); the sum cannot be "
                    "unmasked. Lower privacy.threshold or keep more sites alive (min_clients >= threshold)"
                )
                self._cv.notify_all()
                raise errors.RoundFailedError(st.failed)
            self._cv.notify_all()
            deadline = time.monotonic() + self.spec.unmask_timeout
            while set(st.u3) & self._live() - set(st.reveals) and time.monotonic() < deadline:
                self._cv.wait(0.25)
            return st

    def _rebuild(self, st: _RoundState, owner: str, kind: str, position: dict[str, int]) -> bytes:
        shares = {position[h]: r[kind][owner] for h, r in st.reveals.items() if owner in r[kind]}
        try:
            return combine(shares, st.threshold)
        except ShamirError as exc:
            what = "self-mask seed" if kind == "b" else "masking key (it dropped out)"
            silent = sorted(set(st.u3 or []) - set(st.reveals))  # the first cause: who did not reveal
            st.failed = (
                (
                    f"{', '.join(silent[:10])} sent a masked update but never revealed its shares; "
                    if silent
                    else ""
                )
                + f"round {st.number}: cannot rebuild {owner}'s {what}: {exc} ({len(st.reveals)} of "
                f"{len(st.u3 or [])} survivors revealed shares within privacy.unmask_timeout="
                f"{self.spec.unmask_timeout:g}s; threshold {st.threshold})"
            )
            raise errors.RoundFailedError(st.failed) from None

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        with self._cv:
            self._state = None  # secrets rebuilt for this round are dropped with it
        self.inner.round_closed(round_num, plan, results)


class MaskedSumAggregator(Aggregator):
    """Sums masked uint64 updates modulo 2^64 (relays send these sums up); on the server, removes the masks
    and hands the decoded weighted mean update to the wrapped strategy's ``apply`` (FedAvg: add it)."""

    decomposable = True

    def __init__(
        self, global_params: Mapping[str, np.ndarray], inner: WeightedMeanAggregator, owner: SecAgg
    ) -> None:
        self._global, self._inner, self._owner = global_params, inner, owner
        self._sums: dict[str, np.ndarray] = {}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def _accumulator(self, name: str) -> np.ndarray:
        acc = self._sums.get(name)
        if acc is None:
            shape = (1,) if name == WEIGHT else self._global[name].shape
            acc = self._sums[name] = np.zeros(shape, RING)
        return acc

    def add(self, update: ClientUpdate) -> None:
        expected = set(self._global) | {WEIGHT}
        if set(update.params) != expected:
            raise errors.UpdateRejectedError(
                f"a masked update must carry every tensor of the model and {WEIGHT} "
                f"(missing {sorted(expected - set(update.params))[:5]})"
            )
        self._owner.admit([update.site])
        blockwise = getattr(update.params, "iter_blocks", None)
        for name in update.params:
            flat = self._accumulator(name).reshape(-1)
            for first, block in blockwise(name) if blockwise is not None else blocks_of(update.params[name]):
                flat[first : first + block.size] += np.asarray(block, RING)
        self._count += 1

    def check_partial_sites(self, sites: list[str]) -> None:
        self._owner.admit(sites)

    def partial(self) -> tuple[Params, dict[str, float]]:
        return self._sums, {name: float(self._count) for name in self._sums}

    def add_partial(self, sums: Params, weights: dict[str, float], count: int) -> None:
        for name, value in sums.items():
            self._accumulator(name).__iadd__(np.asarray(value, RING))
        self._count += count

    def result(self) -> Params:
        return dict(self.result_items())

    def result_items(self) -> Iterator[tuple[str, np.ndarray]]:
        names = mask_order(list(self._global))
        sizes = {n: (1 if n == WEIGHT else int(self._global[n].size)) for n in names}
        for n in names:
            self._accumulator(n)
        for name, blocks in self._owner.recovered_masks(names, sizes):
            flat = self._sums[name].reshape(-1)
            for first, block in blocks:
                flat[first : first + block.size] -= block
        frac_bits = self._owner.spec.frac_bits
        weight = float(decode(self._sums.pop(WEIGHT), frac_bits)[0])
        if not weight > 0:
            raise errors.RoundFailedError(
                f"secure aggregation: the unmasked weights sum to {weight:g}; nothing to average"
            )
        for name in list(self._global):
            base = self._global[name]
            mean = (decode(self._sums.pop(name), frac_bits) / weight).astype(acc_dtype(base.dtype))
            yield name, self._inner.apply(name, base, mean.reshape(base.shape))
