"""Whole jobs over mutual TLS on real processes: one healthy site, one with a bad certificate or policy.

Each asserts the job's outcome, what both sides logged, and that ``hpcflare logs diagnose`` names the cause
and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from hpcflare.cli import main as cli
from hpcflare.exitcodes import ExitCode
from hpcflare.security.jobs import prepare_job
from hpcflare.security.provision import Participant, Project, provision
from tests.conftest import HELLO_MODEL, SLOW, events, load_result
from tests.security.conftest import tamper


def _diagnose(job_dir: Path, capsys) -> str:
    capsys.readouterr()
    assert cli(["logs", "diagnose", str(job_dir)]) == 0
    return capsys.readouterr().out


def test_local_job_runs_over_mutual_tls(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, num_rounds=2, train_args="0", tls="on").execute(local_env)
    result = load_result(run.get_result(timeout=90))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)
    started = [e for e in events(run.job_dir.root, "server") if e["event"] == "server_started"][0]
    assert started["tls"] is True and "mutual TLS, project" in started["msg"]
    assert (run.job_dir.root / "kits" / "site-1" / "key.pem").stat().st_mode & 0o077 == 0
    assert yaml.safe_load(run.job_dir.config_path.read_text())["tls"] == "on"


def test_local_mode_stays_plain_text_by_default(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, train_args="0").execute(local_env)
    run.get_result(timeout=90)
    assert not (run.job_dir.root / "kits").exists()
    assert yaml.safe_load(run.job_dir.config_path.read_text())["tls"] == "off"


@pytest.mark.parametrize(
    "how, client_says, server_says, fix",
    [
        ("expired", "expired on", "certificate has expired", "issue a fresh startup kit"),
        ("foreign", "CERTIFICATE_VERIFY_FAILED", "", "startup kit from another project"),
        (
            "unlisted",
            "'intruder' is not a participant of project",
            "is not a participant of project",
            "provision --add",
        ),
        (
            "other-site",
            "'site-1' may not act as site 'site-2'",
            "claims to be site 'site-2'",
            "own startup kit",
        ),
    ],
)
def test_site_with_a_bad_certificate_is_refused_and_the_job_goes_on(
    make_recipe, local_env, capsys, how, client_says, server_says, fix
):
    recipe = make_recipe(
        SLOW,
        n_clients=2,
        min_clients=1,
        num_rounds=3,
        train_args="1",  # the job outlives site-2's start on a loaded machine, so its handshake reaches the server
        tls="on",
        settings={"registration_timeout": 6},
    )
    job_dir = recipe.export(local_env.job_root)
    prepare_job(job_dir, secure_default=False)
    kit = tamper(job_dir.root / "kits", "site-2", how)
    if how == "unlisted":  # keep the kit's own name so the site still starts and presents the certificate
        (kit / "kit.yaml").write_text(
            (kit / "kit.yaml").read_text().replace("name: intruder", "name: site-2")
        )
    run = local_env.deploy(job_dir)
    load_result(run.get_result(timeout=90))  # site-1 alone completes the job
    assert run.exit_codes["site-2"] == ExitCode.CERTIFICATE_ERROR
    site2 = (job_dir.log_dir / "site-2.log").read_text()
    assert client_says in site2
    server = (job_dir.log_dir / "server.log").read_text()
    if server_says:
        assert server_says in server
    if how in ("expired", "foreign"):  # gRPC core's handshake line, lifted into the server's JSON log
        assert any(e["event"] == "tls_refused" for e in events(job_dir.root, "server"))
    text = _diagnose(job_dir.root, capsys)
    assert "site-2" in text and "CERTIFICATE_ERROR" in text and fix in text


def test_site_policy_refuses_an_unlisted_training_script(make_recipe, local_env, tmp_path, capsys):
    approved = tmp_path / "approved.py"
    approved.write_text("print('the only script site-2 runs')\n")
    project = Project(
        "fed",
        [
            Participant("server", "server"),
            Participant("site-1", "client"),
            Participant("site-2", "client", allowed_scripts=[str(approved)]),
        ],
    )
    kits = provision(project, tmp_path / "ws")
    run = make_recipe(
        SLOW,
        n_clients=2,
        min_clients=1,
        num_rounds=1,
        train_args="0",
        tls="on",
        kits_dir=kits,
        settings={"registration_timeout": 6},
    ).execute(local_env)
    result = load_result(run.get_result(timeout=90))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 1)
    assert run.exit_codes["site-2"] == ExitCode.POLICY_REFUSED and run.exit_codes["site-1"] == 0
    assert "refuses to run client.py" in (run.job_dir.log_dir / "site-2.log").read_text()
    assert any(
        e["event"] == "client_failed" and "refuses to run" in e["msg"]
        for e in events(run.job_dir.root, "server")
    )  # the server was told why, and did not wait for it
    text = _diagnose(run.job_dir.root, capsys)
    assert "POLICY_REFUSED" in text and "allowed_scripts" in text


def test_project_site_outside_this_job_gets_no_task(make_recipe, local_env, tmp_path):
    """site-3 is in the project (valid certificate) but not in this job: registration and tasks are refused."""
    import json

    from hpcflare import errors
    from hpcflare.security.tls import StartupKit
    from hpcflare.settings import Settings
    from hpcflare.transport.grpc_client import GrpcClientTransport

    project = Project(
        "fed", [Participant("server", "server")] + [Participant(f"site-{i}", "client") for i in (1, 2, 3)]
    )
    kits = provision(project, tmp_path / "ws")
    run = make_recipe(SLOW, n_clients=2, num_rounds=1, train_args="3", tls="on", kits_dir=kits).execute(
        local_env
    )
    server_json = run.job_dir.rendezvous_dir / "server.json"
    import time

    deadline = time.monotonic() + 30
    while not server_json.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    address = json.loads(server_json.read_text())["address"]
    outsider = GrpcClientTransport(address, Settings(), StartupKit.load(kits / "site-3"))
    try:
        with pytest.raises(errors.RegistrationRefusedError, match="not one of this job.s sites"):
            outsider.call("Register", {"site": "site-3"}, 5)
        with pytest.raises(errors.UnknownClientError):
            outsider.call("GetTask", {"site": "site-3", "token": "guess"}, 5)
    finally:
        outsider.close()
    np.testing.assert_array_equal(load_result(run.get_result(timeout=90))["numpy_key"], HELLO_MODEL + 1)


def test_a_job_resubmitted_with_sites_packed_into_ranks_gets_kits_for_the_ranks(make_recipe, tmp_path):
    """Submitted once a rank per site (a kit per site), then again with 2 sites per client rank: the job's own
    CA issues the ranks' kits, and the servers' kits learn their names, so the job runs over mutual TLS."""
    from hpcflare.env import LocalEnv
    from hpcflare.job import JobDir

    env = LocalEnv(job_root=tmp_path / "jobs", verbose=False, clients_per_rank=2)
    job_dir = JobDir(
        make_recipe(SLOW, n_clients=4, num_rounds=1, train_args="0").export(tmp_path / "jobs").root
    )
    prepare_job(job_dir, secure_default=True)
    kits = job_dir.root / "kits"
    assert sorted(p.name for p in kits.iterdir() if p.name.startswith(("site", "client-rank"))) == [
        "site-1",
        "site-2",
        "site-3",
        "site-4",
    ]
    config = job_dir.load_config()
    config.clients_per_rank = 2
    job_dir.save_config(config)
    prepare_job(job_dir, secure_default=True)
    assert (kits / "client-rank-1" / "key.pem").is_file() and (kits / "client-rank-2" / "key.pem").is_file()
    server_kit = yaml.safe_load((kits / "server" / "kit.yaml").read_text())
    assert server_kit["participants"]["client-rank-2"] == "client"
    run = env.deploy(job_dir)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=90))["numpy_key"], HELLO_MODEL + 1)
    started = [e for e in events(job_dir.root, "server") if e["event"] == "server_started"][0]
    assert started["tls"] is True


def test_client_ranks_of_a_fresh_tls_job_get_their_own_kits(make_recipe, tmp_path):
    from hpcflare.env import LocalEnv

    run = make_recipe(SLOW, n_clients=4, num_rounds=1, train_args="0", tls="on").execute(
        LocalEnv(job_root=tmp_path / "jobs", verbose=False, clients_per_rank=2)
    )
    np.testing.assert_array_equal(load_result(run.get_result(timeout=90))["numpy_key"], HELLO_MODEL + 1)
    kits = run.job_dir.root / "kits"
    assert (
        (kits / "client-rank-1").is_dir()
        and (kits / "client-rank-2").is_dir()
        and not (kits / "site-1").exists()
    )
