"""Federated k-means: Lloyd's algorithm with the assignment step at the sites.

The global model is ``centers`` (k x d) and ``counts`` (k: points per center in the last round). Round 1
(all counts zero): each site clusters its own rows (k-means++) and sends its k centers with their sizes; the
server clusters those k x sites weighted centers into k. Every later round: each site assigns its rows to the
global centers and sends each cluster's mean and size; the new center is the size-weighted mean over sites,
exactly the centralized Lloyd step on the union of the rows. A center no site's rows fell into stays put.
Sites never send rows, only per-cluster means and counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hpcflare.errors import ConfigError, RoundFailedError, UpdateRejectedError
from hpcflare.strategy.api import Aggregator, ClientUpdate, Params, Strategy


class KMeans(Strategy):
    name = "kmeans"
    supports_relays = False  # round 1 pools every site's centers

    def __init__(self, n_clusters: int, seed: int = 0) -> None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
            raise ConfigError(f"kmeans needs n_clusters >= 1, got {n_clusters!r}")
        self.n_clusters, self.seed = n_clusters, int(seed)

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        if (
            "centers" not in global_params
            or "counts" not in global_params
            or np.shape(global_params["centers"])[0] != self.n_clusters
        ):
            raise ConfigError(
                f"a kmeans job's model is {{'centers': ({self.n_clusters}, d), 'counts': "
                f"({self.n_clusters},)}}: use KMeansRecipe"
            )
        return _KMeansAggregator(global_params, self.seed)


class _KMeansAggregator(Aggregator):
    """Round 1 keeps every site's (centers, counts) to cluster them (k x sites rows, small); later rounds
    keep only the weighted sums."""

    def __init__(self, global_params: Mapping[str, np.ndarray], seed: int) -> None:
        self._centers = np.asarray(global_params["centers"], np.float64)
        self._initial = not np.asarray(global_params["counts"]).any()
        self._seed = seed
        self._pool: list[tuple[np.ndarray, np.ndarray]] = []
        self._sums = np.zeros_like(self._centers)
        self._counts = np.zeros(len(self._centers))
        self._n = 0

    @property
    def count(self) -> int:
        return self._n

    def add(self, update: ClientUpdate) -> None:
        if "centers" not in update.params or "counts" not in update.params:
            raise UpdateRejectedError(f"{update.site} must send both 'centers' and 'counts'")
        centers = np.asarray(update.params["centers"], np.float64)
        counts = np.asarray(update.params["counts"], np.float64)
        if (counts < 0).any():
            raise UpdateRejectedError(f"{update.site} sent negative cluster counts")
        if self._initial:
            self._pool.append((centers.copy(), counts.copy()))
        else:
            self._sums += centers * counts[:, None]
            self._counts += counts
        self._n += 1

    def result(self) -> Params:
        if self._initial:
            points = np.concatenate([c for c, _ in self._pool])
            weights = np.concatenate([w for _, w in self._pool])
            centers, counts = weighted_kmeans(points, weights, len(self._centers), self._seed)
        else:
            counts = self._counts
            centers = self._centers.copy()
            filled = counts > 0
            centers[filled] = self._sums[filled] / counts[filled, None]
        return {"centers": centers.astype(self._centers.dtype), "counts": counts.astype(np.float64)}


def weighted_kmeans(
    points: np.ndarray, weights: np.ndarray, k: int, seed: int = 0, iterations: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding then Lloyd on weighted points -> (k centers, total weight per center)."""
    rng = np.random.default_rng(seed)
    keep = weights > 0
    points, weights = points[keep], weights[keep]
    if len(points) == 0:
        raise RoundFailedError(
            "k-means round 1: no site sent a cluster with rows (every count was 0); check "
            "that the sites have data"
        )
    centers = [points[rng.choice(len(points), p=weights / weights.sum())]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centers], axis=0) * weights
        centers.append(
            points[rng.choice(len(points), p=d2 / d2.sum())]
            if d2.sum() > 0
            else points[rng.integers(len(points))]
        )
    c = np.array(centers)
    for _ in range(iterations):
        label = ((points[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        total = np.bincount(label, weights, minlength=k)
        new = c.copy()
        for j in np.flatnonzero(total > 0):
            new[j] = (points[label == j] * weights[label == j, None]).sum(0) / total[j]
        if np.allclose(new, c):
            break
        c = new
    label = ((points[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    return c, np.bincount(label, weights, minlength=k)
