"""Secure aggregation in real jobs: the masked sum equals plain FedAvg; sites that drop out after sharing
are unmasked by the survivors; too few survivors fail the round with its cause; relays add masked sums."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import events, load_result

MODEL = {
    "body": np.linspace(-1, 1, 3000, dtype=np.float32).reshape(30, 100),
    "bias": np.zeros(7, np.float32),
    "steps": np.array([5], np.int64),
}
SCRIPT = """
import zlib
import numpy as np
import hpcflare.client as flare
flare.init()
k = int(flare.get_site_name().split("-")[1])
while flare.is_running():
    m = flare.receive()
    noise = lambda n, v: np.random.default_rng([k, m.current_round, zlib.crc32(n.encode())]).normal(0, 0.1, v.shape)
    params = {n: v + noise(n, v).astype(v.dtype) if v.dtype.kind == "f" else v for n, v in m.params.items()}
    flare.send(flare.FLModel(params=params, meta={"NUM_STEPS_CURRENT_ROUND": k}))
"""


@pytest.mark.parametrize("env", ["sim_env", "local_env"])
def test_secagg_sum_matches_plain_fedavg(make_recipe, request, env):
    plain = make_recipe(SCRIPT, model=MODEL, n_clients=4, num_rounds=2).execute(
        request.getfixturevalue("sim_env")
    )
    expected = load_result(plain.get_result(timeout=120))
    run = make_recipe(SCRIPT, model=MODEL, n_clients=4, num_rounds=2, privacy={"type": "secagg"}).execute(
        request.getfixturevalue(env)
    )
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_allclose(result["body"], expected["body"], atol=1e-5)
    np.testing.assert_allclose(result["bias"], expected["bias"], atol=1e-5)
    np.testing.assert_array_equal(result["steps"], MODEL["steps"])


DROPOUT = SCRIPT.replace(
    "    flare.send(",
    """    if k == 3 and m.current_round == m.total_rounds - 1:  # the last round (current_round counts from 0)
        import os, time
        time.sleep(1.5)  # its keys and shares are out (the exchange runs beside training), its update never is
        os._exit(1)
    flare.send(""",
)


def test_site_lost_after_sharing_is_unmasked_by_the_survivors(make_recipe, local_env):
    plain = make_recipe(DROPOUT, model=MODEL, n_clients=4, min_clients=3, num_rounds=2).execute(local_env)
    expected = load_result(plain.get_result(timeout=120))
    run = make_recipe(
        DROPOUT, model=MODEL, n_clients=4, min_clients=3, num_rounds=2, privacy={"type": "secagg"}
    ).execute(local_env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_allclose(result["body"], expected["body"], atol=1e-5)
    revealed = [e for e in events(run.job_dir.root, "site-1") if e["event"] == "secagg_dropouts"]
    assert revealed and revealed[0]["dropped"] == ["site-3"]


def test_too_few_survivors_fail_the_round_with_the_cause(make_recipe, local_env):
    run = make_recipe(
        DROPOUT,
        model=MODEL,
        n_clients=4,
        min_clients=3,
        num_rounds=2,
        privacy={"type": "secagg", "threshold": 4},
    ).execute(local_env)
    assert run.wait(120)
    status = run.get_status()
    assert status["state"] == "failed"
    assert "fewer than the 4 shares needed" in status["message"] and "privacy.threshold" in status["message"]
    assert status["message"].startswith(
        "site-3 shared keys but sent no masked update"
    )  # the first cause first


@pytest.mark.parametrize("layout", [{"relays": 2}, {"staging": True, "clients_per_rank": 2}])
def test_relays_and_staging_carry_only_masked_sums(make_recipe, local_env, sim_env, layout):
    plain = make_recipe(SCRIPT, model=MODEL, n_clients=4, num_rounds=2).execute(sim_env)
    expected = load_result(plain.get_result(timeout=120))
    run = make_recipe(
        SCRIPT, model=MODEL, n_clients=4, num_rounds=2, privacy={"type": "secagg"}, **layout
    ).execute(local_env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_allclose(result["body"], expected["body"], atol=1e-5)
    partials = [e for e in events(run.job_dir.root, "server") if e["event"] == "partial_accepted"]
    if "relays" in layout:  # the server got one masked partial sum per relay, no site's own upload
        assert sorted(e["relay"] for e in partials if e["round"] == 2) == ["relay-1", "relay-2"]
        assert not [e for e in events(run.job_dir.root, "server") if e["event"] == "result_accepted"]


def test_recipe_cli_privacy_flag(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    job_py = Path(__file__).resolve().parents[2] / "recipes" / "hello-numpy" / "job.py"
    out = subprocess.run(
        [
            sys.executable,
            str(job_py),
            "--env",
            "sim",
            "--n-clients",
            "3",
            "--rounds",
            "2",
            "--privacy",
            "secagg",
            "--job-root",
            str(tmp_path / "jobs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (job,) = (tmp_path / "jobs").iterdir()
    assert "privacy:\n  type: secagg" in (job / "job.yaml").read_text()
    assert [e for e in events(job, "server") if e["event"] == "round_completed" and e["round"] == 2]
