"""Site workflows that keep a link per site (swarm, cross-site evaluation) with several sites per client rank."""

from __future__ import annotations

import json

import numpy as np

from hpcflare.env import LocalEnv
from hpcflare.recipe import SwarmRecipe
from tests.conftest import FAST, HELLO_MODEL, load_result
from tests.strategy.test_swarm import SCRIPT
from tests.strategy.test_workflows import CrossSiteEvalRecipe, build


def test_swarm_with_virtual_clients(tmp_path):
    path = tmp_path / "client.py"
    path.write_text(SCRIPT)
    recipe = SwarmRecipe(
        name="swarm",
        model={"numpy_key": HELLO_MODEL},
        min_clients=3,
        num_rounds=3,
        train_script=path,
        settings=dict(FAST),
        clients_per_rank=3,
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", verbose=False))
    np.testing.assert_allclose(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 3 * 2)
    assert sorted(run.exit_codes) == ["client-rank-1", "server"]  # three sites, one process


def test_cross_site_evaluation_with_virtual_clients(tmp_path):
    run = build(CrossSiteEvalRecipe, tmp_path, n_clients=2, num_rounds=1, clients_per_rank=2).execute(
        LocalEnv(job_root=tmp_path / "jobs", verbose=False)
    )
    np.testing.assert_array_equal(load_result(run.get_result(timeout=90))["numpy_key"], HELLO_MODEL + 1.5)
    matrix = json.loads((run.job_dir.root / "cross_site" / "matrix.json").read_text())
    assert sorted(matrix) == ["global", "site-1", "site-2"]
