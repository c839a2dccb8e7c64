"""Federated k-means, site side: assign this site's rows to the global centers, send each cluster's mean and
size (round 1: this site's own k-means++ clusters). Rows never leave the site."""

import argparse

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin_min

import hpcflare.client as flare
from hpcflare.tabular.data import add_table_arguments, check_table, cluster_rows, load_csv, site_index


def local_clusters(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Round 1: this site's own k clusters (fewer if it has fewer distinct rows; the rest get size 0)."""
    n = min(k, len(np.unique(x, axis=0)))
    fit = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(x)
    centers = np.zeros((k, x.shape[1]))
    counts = np.zeros(k)
    centers[:n] = fit.cluster_centers_
    counts[:n] = np.bincount(fit.labels_, minlength=n)
    return centers, counts


def lloyd_step(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Each global center's mean and size over this site's rows, and the rows' mean squared distance."""
    label, dist = pairwise_distances_argmin_min(x, centers)
    counts = np.bincount(label, minlength=len(centers)).astype(np.float64)
    sums = np.zeros_like(centers)
    np.add.at(sums, label, x)
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    return means, counts, float(np.mean(dist**2))


def main() -> None:
    parser = argparse.ArgumentParser()
    add_table_arguments(parser, n_sites=4, rows=12_000, labels=False)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    while flare.is_running():
        model = flare.receive()
        centers, global_counts = model.params["centers"], model.params["counts"]
        k, d = centers.shape
        if args.data_path:
            x = load_csv(args.data_path.replace("{site}", site), label_column=None, site=site)[0]
        else:
            x = cluster_rows(site_index(site, args.n_sites), args.n_sites, args.rows, k, d, args.seed)
        check_table(site, x, None, n_features=d, labels_required=False)
        if not global_counts.any():
            means, counts = local_clusters(x, k, args.seed)
            inertia = float("nan")
        else:
            means, counts, inertia = lloyd_step(x, centers)
        metrics = {"inertia": inertia} if np.isfinite(inertia) else {}
        flare.send(
            flare.FLModel(
                params={"centers": means, "counts": counts},
                metrics=metrics,
                meta={"NUM_STEPS_CURRENT_ROUND": len(x)},
            )
        )


if __name__ == "__main__":
    main()
