"""Shamir secret sharing of 32-byte secrets (mask seeds, X25519 private keys) over GF(2^521 - 1).

Any ``threshold`` shares rebuild the secret; fewer reveal nothing about it. Share x-coordinates are the
holders' 1-based positions in the round's sorted site list, so a share names its holder by itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

PRIME = (1 << 521) - 1
"""A Mersenne prime larger than any 32-byte secret; shares are 66-byte integers below it."""
SHARE_BYTES = 66
SECRET_BYTES = 32


class ShamirError(ValueError):
    """Too few, repeated or malformed shares."""


def split(secret: bytes, holders: list[int], threshold: int) -> dict[int, bytes]:
    """``secret`` shared among the x-coordinates ``holders`` (distinct, >= 1): x -> share bytes."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(holders) or len(set(holders)) != len(holders) or min(holders) < 1:
        raise ShamirError(f"threshold {threshold} needs that many distinct holders >= 1, got {len(holders)}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at x = 0)."""
    points = [(int(x), int.from_bytes(y, "big")) for x, y in shares.items()]
    if len(points) < threshold:
        raise ShamirError(f"{len(points)} share(s), {threshold} needed")
    if (
        any(len(y) != SHARE_BYTES for y in shares.values())
        or any(not 1 <= x < PRIME for x, _ in points)
        or any(y >= PRIME for _, y in points)
    ):
        raise ShamirError("malformed share")
    points = points[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ShamirError("shares do not belong to one secret")
    return secret.to_bytes(SECRET_BYTES, "big")
