"""The arithmetic of secure aggregation: fixed-point encoding into Z(2^64), mask streams, pairwise keys.

An update x (float, the difference to the round's model) with weight w becomes round(w * x * 2^frac_bits) as
a 64-bit two's-complement integer; sums wrap modulo 2^64 exactly like the masks, so masks cancel bit for bit
and the server decodes Sum(w x) / Sum(w) after removing what is left of them. Mask streams are AES-256-CTR
keystreams (a PRG) keyed by 32-byte seeds: the pairwise seed of sites i and j comes from X25519(i, j) through
HKDF bound to the job and round, so every round's masks are fresh.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterator

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

RING = np.uint64
"""Masked values live in Z(2^64): numpy's uint64 arithmetic wraps exactly so."""
MASK_BLOCK = 1 << 20
"""Elements per keystream block (8 MB of uint64): masks are made and applied a block at a time."""


def encode(values: np.ndarray, weight: float, frac_bits: int, sites: int) -> np.ndarray:
    """w * x in fixed point with ``frac_bits`` fractional bits, as uint64 (two's complement). Refuses values
    whose sum over ``sites`` sites could wrap around 2^63 (the decoded mean would be garbage)."""
    scaled = np.asarray(values, dtype=np.float64) * (float(weight) * float(1 << frac_bits))
    limit = float(1 << 62) / max(1, sites)
    peak = float(np.max(np.abs(scaled))) if scaled.size else 0.0
    if not math.isfinite(peak) or peak >= limit:
        raise OverflowError(
            f"an update value times its weight ({weight:g}) is too large for secure aggregation's "
            f"fixed point (frac_bits={frac_bits}, {sites} sites): lower privacy.frac_bits or the "
            "weight (meta NUM_STEPS_CURRENT_ROUND)"
        )
    return np.rint(scaled).astype(np.int64).view(RING)


def decode(total: np.ndarray, frac_bits: int) -> np.ndarray:
    """A wrapped uint64 sum back to float64 (two's complement, then the fixed-point scale)."""
    return np.asarray(total, dtype=RING).view(np.int64).astype(np.float64) / float(1 << frac_bits)


class MaskStream:
    """A deterministic stream of uint64 masks from a 32-byte seed, consumed in order across tensors."""

    def __init__(self, seed: bytes) -> None:
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()

    def take(self, count: int) -> np.ndarray:
        return np.frombuffer(self._enc.update(bytes(8 * count)), dtype=RING)


def mask_blocks(streams: list[tuple[int, MaskStream]], count: int) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, block) pairs of sum(sign * stream) mod 2^64 over ``count`` elements, every stream advancing by
    ``count``: what a site adds to its encoded update, and what the server subtracts of what is left."""
    for first in range(0, count, MASK_BLOCK):
        size = min(MASK_BLOCK, count - first)
        total = np.zeros(size, RING)
        for sign, stream in streams:
            if sign > 0:
                total += stream.take(size)
            else:
                total -= stream.take(size)
        yield first, total


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def agree(private: bytes | X25519PrivateKey, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key both ends derive: X25519 then HKDF(SHA-256) bound to ``purpose`` and ``context``."""
    key = private if isinstance(private, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(private)
    shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(hashes.SHA256(), 32, salt=None, info=purpose + b"|" + context).derive(shared)


def pair_sign(me: str, peer: str) -> int:
    """+1 for the lower-named site of a pair, -1 for the other: their masks cancel in the sum."""
    return 1 if me < peer else -1


def neighbours(sites: list[str], k: int, round_key: str) -> dict[str, list[str]]:
    """Each site's mask partners: everyone (k >= n-1), or the k nearest on a ring shuffled per round by
    ``round_key`` (SecAgg+: masks and shares cost O(k) per site, not O(n)). Symmetric by construction."""
    n = len(sites)
    if k >= n - 1:
        return {s: [p for p in sites if p != s] for s in sites}
    ring = sorted(sites, key=lambda s: hmac.new(round_key.encode(), s.encode(), hashlib.sha256).digest())
    half = k // 2
    out: dict[str, list[str]] = {}
    for i, s in enumerate(ring):
        out[s] = sorted({ring[(i + d) % n] for d in range(-half, half + 1) if d})
    return out
