"""Site tables for the tabular recipes: a synthetic HIGGS-like task, CSV loading, and the checks that turn a
bad table (no rows, wrong feature count, missing labels) into a message that says what to fix.

Every site regenerates the same population from the seed and keeps only its rows, so no data moves; the
union of all shards is the population, which is what the tests train on centrally to compare.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError

N_FEATURES = 28
"""Like HIGGS: 21 low-level and 7 derived features."""


class TableError(ConfigError):
    """A site's table cannot be used for this job (the message names the site, the problem and the fix)."""


def higgs_like(n: int, seed: int = 0, n_features: int = N_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """A binary task shaped like HIGGS: correlated Gaussian 'low-level' features, 'derived' features that
    are nonlinear functions of them, and a label driven by interactions (trees beat linear models on it)."""
    rng = np.random.default_rng(seed)
    low = n_features * 3 // 4
    mix = np.random.default_rng(12345).normal(0, 0.4, size=(low, low)) + np.eye(low)
    x = rng.normal(size=(n, low)) @ mix
    derived = [np.sqrt(x[:, 2 * i] ** 2 + x[:, 2 * i + 1] ** 2) for i in range(n_features - low)]
    x = np.column_stack([x, *derived])
    logit = (
        1.2 * x[:, 0] * x[:, 1]
        - 0.8 * np.abs(x[:, 2])
        + 0.6 * np.sin(2 * x[:, 3])
        + 0.9 * x[:, low]
        - 0.5 * x[:, low + 1]
        + 0.4 * x[:, 4]
        - 0.3 * x[:, 5] ** 2
        + 0.5
    )
    y = (logit + rng.logistic(size=n) * 0.7 > 0).astype(np.float32)
    return x.astype(np.float32), y


def site_sizes(n: int, n_sites: int, split: str = "noniid") -> list[int]:
    """Rows per site: 'iid' equal shares, 'noniid' shares proportional to 1, 2, ..., n_sites."""
    if split == "iid":
        weights = np.ones(n_sites)
    elif split == "noniid":
        weights = np.arange(1, n_sites + 1, dtype=float)
    else:
        raise ValueError(f"split must be 'iid' or 'noniid', got {split!r}")
    cuts = np.floor(np.cumsum(weights) / weights.sum() * n).astype(int)
    return np.diff(np.concatenate([[0], cuts])).tolist()


def site_rows(
    site_index: int, n_sites: int, n: int = 40_000, seed: int = 0, split: str = "noniid"
) -> tuple[np.ndarray, np.ndarray]:
    """Site ``site_index`` (0-based) of ``n_sites``: its contiguous share of a shuffled population."""
    if not 0 <= site_index < n_sites:
        raise ValueError(f"site index {site_index} outside 0..{n_sites - 1}")
    x, y = higgs_like(n, seed)
    order = np.random.default_rng(seed + 1).permutation(n)
    sizes = site_sizes(n, n_sites, split)
    start = sum(sizes[:site_index])
    mine = order[start : start + sizes[site_index]]
    return x[mine], y[mine]


def holdout(n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A held-out sample of the same task (another draw of the seed's population)."""
    return higgs_like(n, seed + 1_000_003)


def load_csv(
    path: str | Path,
    label_column: str | None = "label",
    site: str = "this site",
    id_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str] | None]:
    """-> (features, labels or None, feature names, row IDs or None) from a CSV file with a header row.
    ``label_column=None``: a table without labels (a vertical job's non-label site)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(
            f"{site}: no data file at {path}; pass --data-path with a CSV per site ({{site}} in the "
            "path is replaced by the site's name)"
        )
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise TableError(f"{site}: {path} is empty; it needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    for name, column in (("label", label_column), ("id", id_column)):
        if column is not None and column not in header:
            raise TableError(
                f"{site}: {path} has no {name} column {column!r} (columns: {header[:20]}); "
                f"set --{name}-column"
            )
    skip = {c for c in (label_column, id_column) if c is not None}
    names = [h for h in header if h not in skip]
    index = {h: i for i, h in enumerate(header)}
    try:
        x = np.array([[float(r[index[h]]) for h in names] for r in body], dtype=np.float32).reshape(
            len(body), len(names)
        )
        y = (
            None
            if label_column is None
            else np.array([float(r[index[label_column]]) for r in body], np.float32)
        )
    except (ValueError, IndexError) as exc:
        raise TableError(
            f"{site}: {path} has a non-numeric or missing value ({exc}); clean the file or impute"
        ) from None
    ids = None if id_column is None else [r[index[id_column]] for r in body]
    return x, y, names, ids


def check_table(
    site: str,
    x: np.ndarray,
    y: np.ndarray | None,
    n_features: int | None = None,
    labels_required: bool = True,
    binary: bool = False,
) -> None:
    """Refuse a table the job cannot use, saying which site and what to do."""
    if x.ndim != 2 or len(x) == 0:
        raise TableError(
            f"{site} has no rows (features shape {tuple(x.shape)}); give it data or leave it out of "
            "the job (n_clients / clients=)"
        )
    if n_features is not None and x.shape[1] != n_features:
        raise TableError(
            f"{site} has {x.shape[1]} feature columns but the job's model has {n_features}; every "
            "site needs the same columns in the same order"
        )
    if labels_required and y is None:
        raise TableError(
            f"{site} has no labels, but it must hold them (the label owner, or a horizontal job); "
            "pass --label-column or give this site the labelled table"
        )
    if y is not None:
        if len(y) != len(x):
            raise TableError(f"{site}: {len(y)} labels for {len(x)} rows")
        if not np.isfinite(y).all():
            raise TableError(f"{site}: labels contain NaN/Inf; drop or fix those rows")
        if binary and not np.isin(y, (0, 1)).all():
            raise TableError(f"{site}: labels must be 0/1 for this job, found {np.unique(y)[:5].tolist()}")


def blobs(n: int, n_clusters: int, n_features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters of unequal spread (a k-means task) -> (rows, true cluster)."""
    task = np.random.default_rng(seed)
    centers = task.uniform(-8, 8, size=(n_clusters, n_features))
    spread = task.uniform(0.6, 1.4, size=n_clusters)
    rng = np.random.default_rng([seed, 1])
    label = rng.integers(0, n_clusters, size=n)
    return (centers[label] + rng.normal(size=(n, n_features)) * spread[label, None]).astype(np.float32), label


def cluster_rows(
    site_index: int, n_sites: int, n: int, n_clusters: int, n_features: int, seed: int = 0, alpha: float = 0.5
) -> np.ndarray:
    """Site ``site_index``'s rows of :func:`blobs`, dealt out per cluster by Dirichlet(alpha) shares, so a
    site sees mostly a few clusters (non-IID, as hospitals see different patient groups)."""
    x, label = blobs(n, n_clusters, n_features, seed)
    rng = np.random.default_rng(seed + 2)
    owner = np.empty(n, dtype=np.int64)
    for c in range(n_clusters):
        idx = rng.permutation(np.flatnonzero(label == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * n_sites))[:-1] * len(idx)).astype(int)
        for site, part in enumerate(np.split(idx, cuts)):
            owner[part] = site
    return x[owner == site_index]


def site_index(site: str, n_sites: int) -> int:
    """0-based shard for a site named 'site-N' (N in 1..n_sites); other names are refused with the fix."""
    head, _, tail = site.rpartition("-")
    if head and tail.isdigit() and 1 <= int(tail) <= n_sites:
        return int(tail) - 1
    raise TableError(
        f"synthetic data is sharded by site name site-1 ... site-{n_sites}, not {site!r}; "
        "pass --data-path with a file per site instead"
    )


def vertical_population(n: int = 20_000, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(row IDs, features, labels) of the HIGGS-like task for vertical jobs; sites hold column blocks."""
    x, y = higgs_like(n, seed)
    return [f"person-{i:07d}" for i in range(n)], x, y


def vertical_columns(site_index: int, n_sites: int, n_features: int = N_FEATURES) -> np.ndarray:
    """The feature columns site ``site_index`` holds: contiguous blocks, the label owner (0) first."""
    return np.array_split(np.arange(n_features), n_sites)[site_index]


def vertical_site(
    site_index: int, n_sites: int, n: int = 20_000, seed: int = 0, coverage: float = 0.9
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Site ``site_index``'s table: a random ``coverage`` share of the people (so rows must be aligned by
    PSI), its own columns, and labels only at site 0 (the label owner)."""
    ids, x, y = vertical_population(n, seed)
    keep = np.sort(np.random.default_rng([seed, site_index, 7]).permutation(n)[: int(n * coverage)])
    cols = vertical_columns(site_index, n_sites, x.shape[1])
    return [ids[i] for i in keep], x[np.ix_(keep, cols)], (y[keep] if site_index == 0 else None)


def add_table_arguments(parser: Any, n_sites: int, rows: int, labels: bool = True) -> None:
    """The flags every tabular client script takes: a CSV per site, or a synthetic shard (``labels=False``: an
    unlabelled task, no --label-column)."""
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with a header row; {site} = site name"
    )
    if labels:
        parser.add_argument("--label-column", default="label")
    parser.add_argument("--n-sites", type=int, default=n_sites)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--seed", type=int, default=0)


def site_table(args: Any, site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (x, y, x_test, y_test) for ``site`` from add_table_arguments' flags: its CSV (scored on itself) or its
    synthetic shard (scored on the shared holdout set)."""
    if args.data_path:
        x, y, _, _ = load_csv(args.data_path.replace("{site}", site), args.label_column, site)
        return x, y, x, y  # type: ignore[return-value]
    x, y = site_rows(site_index(site, args.n_sites), args.n_sites, args.rows, args.seed)
    return (x, y, *holdout(seed=args.seed))


def align_rows(
    site: str, ids: list[str], x: np.ndarray, y: np.ndarray | None, intersection: Path
) -> tuple[np.ndarray, np.ndarray | None]:
    """This site's rows in the order of the PSI intersection (sorted IDs), so that row n is the same person
    at every site."""
    if not intersection.is_file():
        raise TableError(
            f"{site}: no PSI result at {intersection}; run recipes/psi first (job.py does) and pass "
            "its job directory with --psi-job"
        )
    wanted = intersection.read_text().split()
    row = {i: n for n, i in enumerate(ids)}
    missing = [i for i in wanted if i not in row]
    if missing:
        raise TableError(
            f"{site}: {len(missing)} intersection IDs are not in this site's table (e.g. {missing[0]!r})"
        )
    take = np.array([row[i] for i in wanted], dtype=np.int64)
    return x[take], (None if y is None else y[take])


def add_vertical_arguments(parser: Any, n_sites: int, rows: int) -> None:
    """The flags of a vertical job's site script: the PSI job that aligned the rows, the ID column, and a table
    per site (a CSV, or a synthetic column block)."""
    parser.add_argument(
        "--psi-job", required=True, help="the PSI job's directory (its sites/<site>/ hold the IDs)"
    )
    parser.add_argument("--id-column", default="id")
    add_table_arguments(parser, n_sites=n_sites, rows=rows)


def vertical_table(site: str, owner: bool, args: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """This site's columns (and the labels, at the label owner) of the rows every site shares, in the PSI
    intersection's order: from ``--data-path``'s CSV, else the synthetic table."""
    if args.data_path:
        path = args.data_path.replace("{site}", site)
        x, y, _, ids = load_csv(path, args.label_column if owner else None, site, id_column=args.id_column)
    else:
        ids, x, y = vertical_site(site_index(site, args.n_sites), args.n_sites, args.rows, args.seed)
    check_table(site, x, y, labels_required=owner, binary=owner)
    return align_rows(site, ids, x, y, Path(args.psi_job) / "sites" / site / "psi_intersection.txt")
