"""Site tables: CSV loading and the checks that turn an unusable table into a message naming the site and fix."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.tabular.data import TableError, check_table, load_csv, site_index, site_rows, site_sizes


def write(path, text: str):
    path.write_text(text)
    return path


def test_csv_round_trip_keeps_columns_labels_and_ids(tmp_path):
    x, y, names, ids = load_csv(
        write(tmp_path / "a.csv", "id,f1,label,f2\np-1,1.5,1,2\np-2,3,0,4\n"),
        "label",
        "site-1",
        id_column="id",
    )
    np.testing.assert_array_equal(x, [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(y, [1, 0])
    assert names == ["f1", "f2"] and ids == ["p-1", "p-2"]


@pytest.mark.parametrize(
    "text, label, message",
    [
        ("", "label", "is empty"),
        ("f1,f2\n1,2\n", "label", "no label column 'label'.*--label-column"),
        ("f1,label\n1,x\n", "label", "non-numeric or missing value"),
        ("f1,label\n1\n", "label", "non-numeric or missing value"),
    ],
)
def test_unusable_csv_names_the_site_and_the_fix(tmp_path, text, label, message):
    with pytest.raises(TableError, match=f"site-3: .*{message}"):
        load_csv(write(tmp_path / "t.csv", text), label, "site-3")
    with pytest.raises(TableError, match="no data file at .*--data-path"):
        load_csv(tmp_path / "missing.csv", label, "site-3")


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (np.zeros((0, 3)), None, {"labels_required": False}, "site-2 has no rows"),
        (np.zeros((4, 3)), np.zeros(4), {"n_features": 5}, "3 feature columns but the job's model has 5"),
        (np.zeros((4, 3)), None, {}, "has no labels, but it must hold them"),
        (np.zeros((4, 3)), np.zeros(3), {}, "3 labels for 4 rows"),
        (np.zeros((2, 3)), np.array([0.0, np.nan]), {}, "NaN/Inf"),
        (np.zeros((2, 3)), np.array([0.0, 2.0]), {"binary": True}, "must be 0/1"),
    ],
)
def test_check_table_refuses_what_the_job_cannot_use(x, y, kwargs, message):
    with pytest.raises(TableError, match=message):
        check_table("site-2", x, y, **kwargs)
    check_table("site-2", np.zeros((2, 3)), np.array([0.0, 1.0]), n_features=3, binary=True)


def test_synthetic_shards_partition_the_population_in_non_iid_sizes():
    sizes = site_sizes(1000, 4)
    assert sum(sizes) == 1000 and sizes == sorted(sizes) and len(set(sizes)) == 4
    shards = [site_rows(i, 4, 1000) for i in range(4)]
    assert [len(y) for _, y in shards] == sizes
    rows = np.concatenate([x for x, _ in shards])
    assert len(np.unique(rows, axis=0)) == 1000  # no row in two shards
    with pytest.raises(TableError, match="site-1 ... site-4, not 'hospital'"):
        site_index("hospital", 4)
