"""Diffie-Hellman PSI: every site gets exactly the common IDs, and nothing the server receives reveals an ID
(neither the ID's bytes nor its plain hash: only points under keys the server lacks)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcflare.errors import UpdateRejectedError
from hpcflare.strategy.api import ClientUpdate, UpdateKind
from hpcflare.strategy.psi import PSI
from hpcflare.tabular.psi import POINT, PsiSite, hash_ids

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "psi"


def run_ring(sets: dict[str, list[str]]) -> tuple[dict[str, PsiSite], list[bytes], PSI]:
    """The strategy and the sites' side, round by round, as the runtime drives them; returns every upload."""
    strategy = PSI(salt="test-salt")
    sites = {name: PsiSite(name, ids) for name, ids in sets.items()}
    seen: list[bytes] = []
    for number in range(1, len(sets) + 2):
        plan = strategy.plan_round(number, len(sets) + 1, list(sets))
        meta = strategy.configure_round(number, len(sets) + 1)
        aggregator = strategy.new_aggregator(plan.model)
        for name, site in sites.items():
            params = site.answer(dict(plan.model), meta)
            seen += [np.asarray(v).tobytes() for v in params.values()]
            aggregator.add(ClientUpdate(name, params, UpdateKind.FULL, 1.0))
        strategy.round_closed(number, plan, {})
    return sites, seen, strategy


def test_every_site_learns_exactly_the_common_ids():
    sets = {
        "site-1": [f"p{i}" for i in range(0, 300)],
        "site-2": [f"p{i}" for i in range(100, 400)],
        "site-3": [f"p{i}" for i in range(150, 260)] + ["x", "y"],
    }
    sites, _, strategy = run_ring(sets)
    truth = sorted(set(sets["site-1"]) & set(sets["site-2"]) & set(sets["site-3"]))
    assert len(truth) == 110
    assert all(site.intersection == truth for site in sites.values())
    assert strategy.counts == {name: 110 for name in sets}


def test_the_server_never_sees_an_id_or_its_hash():
    ids = {
        "site-1": [f"alice-{i:04d}" for i in range(50)] + ["bob-only-on-1"],
        "site-2": [f"alice-{i:04d}" for i in range(25, 75)] + ["carol-only-on-2"],
    }
    _, seen, _ = run_ring(ids)
    blob = b"".join(seen)
    everyone = {i for group in ids.values() for i in group}
    for identity in everyone:
        assert identity.encode() not in blob
        assert hashlib.sha256(identity.encode()).digest() not in blob
    for digest in hash_ids(sorted(everyone), "test-salt"):  # not even the salted hash the points start from
        assert digest not in blob
    # and the same ID is a different point at each site before the last key is applied
    first = PsiSite("site-1", ["same"]).answer(
        {}, {"psi": {"phase": "encrypt", "step": 0, "ring": ["site-1"], "salt": "s"}}
    )
    other = PsiSite("site-2", ["same"]).answer(
        {}, {"psi": {"phase": "encrypt", "step": 0, "ring": ["site-2"], "salt": "s"}}
    )
    assert first["items"].tobytes() != other["items"].tobytes()


def test_a_site_that_drops_or_forges_points_is_refused():
    strategy = PSI(salt="s")
    plan = strategy.plan_round(1, 3, ["site-1", "site-2"])
    agg = strategy.new_aggregator(plan.model)
    meta = strategy.configure_round(1, 3)
    for name in ("site-1", "site-2"):
        agg.add(ClientUpdate(name, PsiSite(name, ["a", "b", "c"]).answer({}, meta), UpdateKind.FULL, 1.0))
    strategy.round_closed(1, plan, {})
    plan = strategy.plan_round(2, 3, ["site-1", "site-2"])
    agg = strategy.new_aggregator(plan.model)
    with pytest.raises(UpdateRejectedError, match="may not add or drop IDs"):
        agg.add(ClientUpdate("site-1", {"items": np.zeros(2 * POINT, np.uint8)}, UpdateKind.FULL, 1.0))
    with pytest.raises(UpdateRejectedError, match="invalid curve point"):
        PsiSite("site-1", ["a"]).answer(
            {"list:site-2": np.zeros(POINT, np.uint8)},
            {"psi": {"phase": "encrypt", "step": 1, "ring": ["site-1", "site-2"], "salt": "s"}},
        )


def test_a_lost_site_fails_the_job_with_the_reason():
    strategy = PSI(salt="s")
    strategy.plan_round(1, 4, ["site-1", "site-2", "site-3"])
    with pytest.raises(Exception, match=r"needs every site of its ring, \['site-3'\] left"):
        strategy.plan_round(2, 4, ["site-1", "site-2"])


def test_psi_recipe_as_a_job_writes_each_sites_intersection(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(RECIPE / "job.py"),
            "--env",
            "sim",
            "--n-clients",
            "3",
            "--n-ids",
            "500",
            "--overlap",
            "0.4",
            "--job-root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (job,) = tmp_path.glob("psi-*")
    expected = [f"patient-{i:07d}" for i in range(200)]
    for site in ("site-1", "site-2", "site-3"):
        assert (job / "sites" / site / "psi_intersection.txt").read_text().split() == expected
    assert '"intersection_size": 200' in (job / "models" / "psi.json").read_text()


def test_a_checkpointed_psi_job_refuses_to_resume():
    """Site keys die with their processes: resuming the ring would intersect lists under keys nobody holds."""
    from hpcflare.errors import ConfigError

    strategy = PSI(salt="s")
    strategy.plan_round(1, 3, ["site-1", "site-2"])
    state = strategy.state_dict()
    assert state  # written with the checkpoint, so a resume sees it
    with pytest.raises(ConfigError, match="cannot resume from a checkpoint"):
        PSI(salt="s").load_state_dict(state)
