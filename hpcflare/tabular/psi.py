"""Private set intersection of string IDs across N sites: Diffie-Hellman PSI (Meadows 1986; Huberman, Franklin
and Hogg 1999) on Curve25519, with the server as the only party that compares.

Each site hashes its IDs (SHA-256 of the job's salt and the ID) to curve points and raises them to its secret
key (X25519 scalar multiplication, which commutes: (H^a)^b = (H^b)^a). Round 1 every site sends its own list
so encrypted; in rounds 2..N the server passes list j to the next site in the ring, which applies its key, so
after N rounds every list carries every site's key. The server then finds the tokens present in all N lists
and tells each site the positions of its intersecting rows (round N+1); the site maps positions to its IDs.

Who learns what (semi-honest, server not colluding with a site): a site learns the intersection and the list
sizes; the server learns list sizes and the sizes of intersections among sites, never an ID (it only ever
holds points under keys it lacks). A site never sees a list under all keys, so it cannot compare its own with
another's. Order is kept through the ring, so positions stay valid; a site shuffles its list once, first.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from hpcflare.errors import UpdateRejectedError

POINT = 32
"""Bytes per encrypted ID (an X25519 u-coordinate)."""
LIST_PREFIX = "list:"
HITS_PREFIX = "hits:"


def hash_ids(ids: Sequence[str], salt: str) -> list[bytes]:
    prefix = b"hpcflare-psi\x00" + salt.encode() + b"\x00"
    return [hashlib.sha256(prefix + str(i).encode()).digest() for i in ids]


def apply_key(key: X25519PrivateKey, points: bytes | np.ndarray) -> np.ndarray:
    """Raise every 32-byte point to ``key`` -> uint8 array of the same length."""
    data = (
        memoryview(np.ascontiguousarray(points, dtype=np.uint8)).cast("B")
        if isinstance(points, np.ndarray)
        else memoryview(points)
    )
    if len(data) % POINT:
        raise UpdateRejectedError(
            f"a PSI list is {len(data)} bytes, not a whole number of {POINT}-byte points"
        )
    out = bytearray(len(data))
    for at in range(0, len(data), POINT):
        try:
            out[at : at + POINT] = key.exchange(
                X25519PublicKey.from_public_bytes(bytes(data[at : at + POINT]))
            )
        except ValueError:  # a low-order point: only a forged list has one
            raise UpdateRejectedError(
                "a PSI list holds an invalid curve point; it was not produced by this protocol"
            ) from None
    return np.frombuffer(bytes(out), dtype=np.uint8)


class PsiSite:
    """One site's side: its secret key (never sent), its IDs in a shuffled order, and each round's answer."""

    def __init__(self, site: str, ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(str(i) for i in ids))
        order = np.random.default_rng(secrets.randbits(64)).permutation(len(unique))
        self.site, self.ids = site, [unique[i] for i in order]
        self.key = X25519PrivateKey.generate()
        self.intersection: list[str] | None = None

    def answer(self, params: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        """This round's upload (meta['psi'] from the server says which list to encrypt, or the result)."""
        psi = meta["psi"]
        if psi["phase"] == "encrypt":
            if psi["step"] == 0:
                points = b"".join(hash_ids(self.ids, psi["salt"]))
                return {"items": apply_key(self.key, points) if points else np.zeros(0, np.uint8)}
            return {
                "items": apply_key(
                    self.key, params[LIST_PREFIX + list_for(self.site, psi["ring"], psi["step"])]
                )
            }
        hits = np.asarray(params[HITS_PREFIX + self.site], dtype=np.int64)
        if hits.size == 1 and hits[0] == -1:
            hits = hits[:0]  # the server's marker for "none of yours" (a tensor cannot be empty)
        if hits.size and (hits.min() < 0 or hits.max() >= len(self.ids)):
            raise UpdateRejectedError(f"the server's PSI result for {self.site} names rows outside its list")
        self.intersection = sorted(self.ids[i] for i in hits)
        return {"count": np.array([len(self.intersection)], dtype=np.int64)}


def list_for(site: str, ring: list[str], step: int) -> str:
    """The list ``site`` encrypts at ``step`` (0 = its own): the one ``step`` places before it in the ring."""
    return ring[(ring.index(site) - step) % len(ring)]


def intersect(lists: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Server side, on lists that carry every key: each site's positions of the tokens all lists share."""
    as_rows = {site: np.asarray(v, np.uint8).reshape(-1, POINT) for site, v in lists.items()}
    common: set[bytes] | None = None
    for rows in as_rows.values():
        tokens = {r.tobytes() for r in rows}
        common = tokens if common is None else common & tokens
    common = common or set()
    return {
        site: np.array([i for i, r in enumerate(rows) if r.tobytes() in common], dtype=np.int64)
        for site, rows in as_rows.items()
    }
