"""Secure aggregation, site side: the key and share exchange runs in the background while the script trains;
the update leaves the site masked, and after the round the site reveals the shares the server needs.

What the site sends the server in the clear: two fresh public keys per round, shares encrypted for its
partners (AES-GCM under an X25519 key the server cannot derive), its masked update (uniform in Z(2^64)), and
after the round shares of survivors' self-mask seeds or of dropped sites' masking keys - never both for one
site, and nothing at all unless at least ``threshold`` updates were summed.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hpcflare import errors
from hpcflare.privacy.api import PrivacySpec, SitePrivacy, poll
from hpcflare.privacy.masking import (
    MaskStream,
    agree,
    encode,
    mask_blocks,
    new_key,
    pair_sign,
    private_bytes,
    public_bytes,
)
from hpcflare.privacy.secagg_server import MASK_PURPOSE, SHARE_PURPOSE, WEIGHT, mask_context, mask_order
from hpcflare.privacy.shamir import split
from hpcflare.transport.api import Task


class _Setup:
    """One round's secrets and what the exchange gave this site."""

    def __init__(self) -> None:
        self.c_key = new_key()
        self.s_key = new_key()
        self.seed = os.urandom(32)
        self.u1: list[str] = []
        self.u2: list[str] = []
        self.partners: list[str] = []
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        self.threshold = 0
        self.held: dict[
            str, tuple[bytes, bytes]
        ] = {}  # owner -> (share of its seed, share of its masking key)
        self.error: BaseException | None = None


class SecAggSite(SitePrivacy):
    def __init__(
        self,
        site: str,
        job_id: str,
        spec: PrivacySpec,
        call: Callable[[dict[str, Any], float], dict],
        round_timeout: float,
        log: Any,
    ) -> None:
        self.site, self.job_id, self.spec, self._call = site, job_id, spec, call
        self.round_timeout, self.log = round_timeout, log
        self._setups: dict[str, tuple[_Setup, threading.Thread]] = {}

    def received(self, task: Task, params: Mapping[str, Any]) -> dict[str, Any]:
        if "privacy" in task.meta and task.task_id not in self._setups:
            setup = _Setup()
            thread = threading.Thread(
                target=self._run_setup, args=(task, setup), daemon=True, name=f"secagg-{self.site}"
            )
            self._setups = {task.task_id: (setup, thread)}  # only the current round's secrets are kept
            thread.start()
        return dict(params)

    def _poll(self, task: Task, op: str, payload: dict[str, Any], wait: float) -> dict[str, Any]:
        try:
            return poll(self._call, task.round, op, payload, wait)
        except TimeoutError:
            raise errors.RoundFailedError(
                f"secure aggregation: no answer to {op!r} within {wait:g}s "
                "(privacy.setup_timeout / privacy.unmask_timeout)"
            ) from None

    def _run_setup(self, task: Task, st: _Setup) -> None:
        try:
            wait = 2 * self.spec.setup_timeout + 30
            reply = self._poll(task, "keys", {"c": public_bytes(st.c_key), "s": public_bytes(st.s_key)}, wait)
            st.u1, st.partners, st.threshold = (
                list(reply["sites"]),
                list(reply["partners"]),
                int(reply["threshold"]),
            )
            st.keys = {p: (bytes(v[0]), bytes(v[1])) for p, v in reply["keys"].items()}
            position = {s: i + 1 for i, s in enumerate(st.u1)}
            holders = st.partners + [self.site]
            xs = [position[h] for h in holders]
            seed_shares = split(st.seed, xs, st.threshold)
            key_shares = split(private_bytes(st.s_key), xs, st.threshold)
            st.held[self.site] = (seed_shares[position[self.site]], key_shares[position[self.site]])
            bundles = {
                p: self._seal(st, p, seed_shares[position[p]], key_shares[position[p]], task.round)
                for p in st.partners
            }
            reply = self._poll(task, "shares", {"shares": bundles}, wait)
            st.u2 = list(reply["sites"])
            for owner, sealed in reply["shares"].items():
                if owner in st.partners and owner in st.u2:
                    st.held[owner] = self._open(st, owner, bytes(sealed), task.round)
        except BaseException as exc:  # noqa: BLE001 - raised again where the update is masked
            st.error = exc

    def _box(self, st: _Setup, peer: str, round_num: int) -> tuple[AESGCM, bytes]:
        context = mask_context(self.job_id, round_num, self.site, peer)
        return AESGCM(agree(st.c_key, st.keys[peer][0], SHARE_PURPOSE, context)), context

    def _seal(self, st: _Setup, peer: str, seed_share: bytes, key_share: bytes, round_num: int) -> bytes:
        box, context = self._box(st, peer, round_num)
        nonce = os.urandom(12)
        body = json.dumps(
            {"from": self.site, "to": peer, "b": seed_share.hex(), "s": key_share.hex()}
        ).encode()
        return nonce + box.encrypt(nonce, body, context)

    def _open(self, st: _Setup, owner: str, sealed: bytes, round_num: int) -> tuple[bytes, bytes]:
        box, context = self._box(st, owner, round_num)
        try:
            body = json.loads(box.decrypt(sealed[:12], sealed[12:], context))
            if body.get("from") != owner or body.get("to") != self.site:
                raise ValueError("addressed to another pair")
            return bytes.fromhex(body["b"]), bytes.fromhex(body["s"])
        except (InvalidTag, ValueError, KeyError, TypeError) as exc:
            raise errors.MalformedMessageError(
                f"secure aggregation: {owner}'s share for {self.site} does not "
                f"decrypt ({type(exc).__name__}); was it altered on the way?"
            ) from None

    def _ready(self, task: Task) -> _Setup:
        entry = self._setups.get(task.task_id)
        if entry is None:
            raise errors.UpdateRejectedError(
                f"secure aggregation: round {task.round}'s key exchange never started"
            )
        setup, thread = entry
        thread.join(4 * self.spec.setup_timeout + 60)
        if thread.is_alive():
            raise errors.RoundFailedError("secure aggregation: the key exchange did not finish in time")
        if setup.error is not None:
            raise setup.error
        return setup

    def protect(self, task: Task, update: dict[str, np.ndarray], weight: float) -> dict[str, np.ndarray]:
        st = self._ready(task)
        streams = [(1, MaskStream(st.seed))]
        for peer in st.partners:
            if peer in st.u2:
                seed = agree(
                    st.s_key,
                    st.keys[peer][1],
                    MASK_PURPOSE,
                    mask_context(self.job_id, task.round, self.site, peer),
                )
                streams.append((pair_sign(self.site, peer), MaskStream(seed)))
        values = {**update, WEIGHT: np.ones(1)}
        out: dict[str, np.ndarray] = {}
        for name in mask_order(list(values)):
            masked = encode(values[name], weight, self.spec.frac_bits, len(st.u2)).reshape(-1)
            for first, block in mask_blocks(streams, masked.size):
                masked[first : first + block.size] += block
            out[name] = masked.reshape(np.shape(values[name]))
        return out

    def uploaded(self, task: Task) -> None:
        st = self._ready(task)
        reply = self._poll(task, "unmask", {}, self.round_timeout + self.spec.unmask_timeout + 30)
        survivors, dropped = set(reply["survivors"]), set(reply["dropped"])
        if not survivors <= set(st.u2) or dropped != set(st.u2) - survivors or len(survivors) < st.threshold:
            raise errors.UpdateRejectedError(
                "secure aggregation: the server's list of survivors is inconsistent "
                "with the round's; no shares revealed"
            )
        reveal_b = {o: shares[0] for o, shares in st.held.items() if o in survivors}
        reveal_s = {o: shares[1] for o, shares in st.held.items() if o in dropped}
        self._call({"op": "reveal", "round": task.round, "b": reveal_b, "s": reveal_s}, self.round_timeout)
        self._setups.pop(task.task_id, None)
        if dropped:
            self.log.info(
                "secagg_dropouts",
                f"round {task.round}: revealed shares to remove the masks of {len(dropped)} dropped site(s)",
                round=task.round,
                dropped=sorted(dropped),
            )
