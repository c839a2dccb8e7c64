"""A federation end to end: standing server, three site agents in their own trees, admins with their roles."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import safetensors.numpy

from hpcflare import errors
from hpcflare.env import ProdEnv
from hpcflare.federation import MonitorReturnCode
from hpcflare.security.provision import Project, provision
from tests.federation.conftest import FAST, wait_state

SITES = ["site-1", "site-2", "site-3"]


def test_a_job_runs_across_three_institutions(federation, tmp_path):
    federation.up(SITES)
    seen = []
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=3))
        result = admin.monitor_job(
            job_id, timeout=300, callback=lambda status: seen.append(status["state"]) or True
        )
        assert result == MonitorReturnCode.JOB_FINISHED
        status = wait_state(admin, job_id, ("done",))
        assert status["server"]["state"] == "completed"
        folder = admin.download_job_result(job_id, tmp_path / "results")
        listed = {job["job_id"]: job["state"] for job in admin.list_jobs()}
    assert listed[job_id] == "done" and "running" in seen
    # each site added its own data_root's number (1, 2, 3) per round: the mean, 2, three times
    weights = safetensors.numpy.load_file(str(folder / "job" / "models" / "global_model.safetensors"))["w"]
    np.testing.assert_allclose(weights, np.full(3, 6.0))
    # the admin never saw a data location: the job says {data_root}, each site ran its own
    assert "{data_root}" in (folder / "job" / "job.yaml").read_text()
    ran = (federation.site_dir("site-2") / "work" / "jobs" / job_id / "job" / "job.yaml").read_text()
    assert str(federation.site_dir("site-2") / "data") in ran
    # no shared filesystem: every site has its own copy of the app, checked against the manifest
    for site in SITES:
        assert (
            federation.site_dir(site) / "work" / "jobs" / job_id / "job" / "app" / "site_script.py"
        ).is_file()

    # audit trails: the admin's actions on the server, each site's decisions at the site
    trail = [
        json.loads(line) for line in (federation.server_dir / "ws" / "audit.jsonl").read_text().splitlines()
    ]
    actions = [(e["identity"], e["action"], e["outcome"]) for e in trail if e["job"] == job_id]
    assert ("alice", "submit", "ok") in actions and ("alice", "download", "ok") in actions
    assert {(site, "accepted", "ok") for site in SITES} <= set(actions)
    site_trail = (federation.site_dir("site-1") / "work" / "audit.jsonl").read_text()
    decisions = [json.loads(line)["action"] for line in site_trail.splitlines()]
    assert decisions[:2] == ["accept", "launch"]
    wait_state_sites_done(federation, job_id)


def wait_state_sites_done(federation, job_id, timeout=120):
    with federation.session("root") as s:
        deadline = time.monotonic() + timeout
        while True:
            sites = s.get_job_status(job_id)["sites"]
            if all(v["state"] == "done" for v in sites.values()):
                return
            assert time.monotonic() < deadline, sites
            time.sleep(0.3)


def test_a_recipe_executes_through_prod_env(federation, tmp_path):
    federation.up(SITES[:2])
    recipe = federation.recipe(SITES[:2], rounds=2, size=2, name="prod-env")
    run = recipe.execute(ProdEnv(federation.kits / "alice", federation.address, job_root=tmp_path / "jobs"))
    result = run.get_result(timeout=300)
    np.testing.assert_allclose(safetensors.numpy.load_file(str(result))["w"], np.full(2, 3.0))
    assert run.get_status()["state"] == "completed"
    assert run.job_dir.read_status()["state"] == "completed"  # mirrored where progress bars look


def test_policy_refusal_reaches_the_admin_in_seconds(federation):
    federation.start_server()
    federation.start_agent("site-1")
    federation.start_agent("site-2", allowed_scripts=["0" * 64])  # only some other script
    federation.wait_connected(SITES[:2])
    with federation.session("alice") as admin:
        started = time.monotonic()
        job_id = admin.submit_job(federation.job(SITES[:2]))
        status = wait_state(admin, job_id, ("failed",), timeout=60)
        took = time.monotonic() - started
    assert took < 30  # not after registration_timeout or site_join_timeout (120 s here)
    assert status["message"].startswith("POLICY_REFUSED") and "site-2" in status["message"]
    assert "site_script.py" in status["sites"]["site-2"]["detail"]
    assert status["sites"]["site-2"]["state"] == "refused"
    site_trail = (federation.site_dir("site-2") / "work" / "audit.jsonl").read_text()
    assert json.loads(site_trail.splitlines()[0])["outcome"] == "refused"
    assert not list((federation.site_dir("site-2") / "work" / "jobs" / job_id / "job").glob("launch"))


def test_roles_decide_who_may_submit_abort_and_download(federation, tmp_path):
    federation.start_server()
    job_dir = federation.job(SITES)  # no agents: the job waits for its sites
    with federation.session("bob") as member:
        with pytest.raises(errors.PermissionDeniedError, match="role project_admin or lead"):
            member.submit_job(job_dir)
        assert member.list_jobs() == []  # members may look
    with federation.session("dave") as dave:
        job_id = dave.submit_job(job_dir)
    with federation.session("alice") as alice:  # another lead
        with pytest.raises(errors.PermissionDeniedError, match="alice .role lead, org hosp-a. may not abort"):
            alice.abort_job(job_id)
        with pytest.raises(errors.PermissionDeniedError):
            alice.download_job_result(job_id, tmp_path / "x")
    with federation.session("olga") as olga:  # org_admin of hosp-a; dave is hosp-b
        with pytest.raises(errors.PermissionDeniedError, match="org_admin of the submitter's org"):
            olga.abort_job(job_id)
    with federation.session("root") as root:
        assert root.abort_job(job_id)["state"] == "aborted"
        with pytest.raises(errors.ConfigError, match="already ended"):
            root.abort_job(job_id)
    trail = [
        json.loads(line) for line in (federation.server_dir / "ws" / "audit.jsonl").read_text().splitlines()
    ]
    denied = {(e["identity"], e["action"]) for e in trail if e["outcome"] == "denied"}
    assert {("bob", "submit"), ("alice", "abort"), ("alice", "download"), ("olga", "abort")} <= denied
    assert ("root", "abort", "ok") in {(e["identity"], e["action"], e["outcome"]) for e in trail}


def test_a_kit_from_another_ca_is_refused(federation, tmp_path):
    federation.start_server()
    other = provision(Project.from_dict({**_project(), "project": "consortium"}), tmp_path / "other")
    with pytest.raises(errors.CertificateError, match="refused"):
        from hpcflare.federation import Session

        with Session(other / "alice", federation.address) as impostor:
            impostor.list_jobs()
    agent = federation.start_agent("site-1", kit=other / "site-1")
    code = agent.wait(timeout=120)
    assert code == 24, federation.output("site-1")  # CERTIFICATE_ERROR
    assert "refused" in federation.output("site-1")


def _project():
    from tests.federation.conftest import PROJECT

    return PROJECT


def test_a_site_offline_at_submit_is_waited_for_then_left_out(federation):
    federation.start_server(site_join_timeout=8)
    for site in SITES[:2]:
        federation.start_agent(site)
    federation.wait_connected(SITES[:2])
    with federation.session("alice") as admin:
        ran = admin.submit_job(federation.job(SITES, rounds=2, min_clients=2))
        failed = admin.submit_job(federation.job(SITES, rounds=2))
        done = wait_state(admin, ran, ("done", "failed"), timeout=240)
        refused = wait_state(admin, failed, ("done", "failed"), timeout=240)
    assert done["state"] == "done", done
    assert done["sites"]["site-3"]["state"] == "left_out"
    assert refused["state"] == "failed" and "never answered: ['site-3']" in refused["message"]
    assert "site_join_timeout=8s" in refused["message"]


def test_settings_fast_profile_is_valid():
    from hpcflare.settings import Settings

    Settings.load("dev", FAST)  # the deadlines these tests run with are a valid profile


def test_a_failing_site_is_named_with_its_own_cause(federation, tmp_path):
    """site-2's data is missing at site-2: the admin sees that site and that cause, in the job's status and in
    `hpcflare logs diagnose` on the downloaded results (the site's own log, which it chose to send)."""
    federation.start_server()
    federation.start_agent("site-1")
    federation.start_agent("site-2", data_root=str(tmp_path / "nothing-here"))
    federation.wait_connected(SITES[:2])
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES[:2]))
        status = wait_state(admin, job_id, ("failed",), timeout=240)
        deadline = time.monotonic() + 180
        while admin.get_job_status(job_id)["sites"]["site-2"]["state"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        site2 = admin.get_job_status(job_id)["sites"]["site-2"]["detail"]
        while True:  # the site sends its logs after it reported
            folder = admin.download_job_result(job_id, tmp_path / "results")
            if (folder / "job" / "logs" / "site-2.jsonl").is_file() or time.monotonic() > deadline + 60:
                break
            time.sleep(0.5)
    assert "site-2" in status["message"]
    assert "TRAIN_SCRIPT_FAILED" in site2 and "offset.txt" in site2
    assert (folder / "job" / "logs" / "site-2.jsonl").is_file()
    from hpcflare.job import JobDir
    from hpcflare.logs.diagnose import report

    text = report(JobDir(folder / "job"))
    assert "site-2" in text and "offset.txt" in text


def test_secure_aggregation_across_institutions(federation, tmp_path):
    """The standing server's job server sees only masked updates; the sites agree their masks through it."""
    federation.up(SITES)
    recipe = federation.recipe(SITES, rounds=2, name="secagg", privacy={"type": "secagg"})
    run = recipe.execute(ProdEnv(federation.kits / "alice", federation.address, job_root=tmp_path / "jobs"))
    result = safetensors.numpy.load_file(str(run.get_result(timeout=300)))["w"]
    np.testing.assert_allclose(result, np.full(3, 4.0), atol=1e-3)


def test_homomorphic_encryption_across_institutions(federation, tmp_path):
    """HE keys provisioned into the kits: each site's secret context stays in its kit, the standing server's job
    server adds ciphertexts with the public one; the result decrypts at a site to the plain FedAvg."""
    pytest.importorskip("tenseal")
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "hpcflare.privacy.he", "provision", str(federation.kits)], check=True
    )
    assert not (federation.kits / "server" / "he_context.ctx").exists()  # the server never holds a secret key
    federation.up(SITES[:2])
    recipe = federation.recipe(SITES[:2], rounds=2, name="he", privacy={"type": "he"})
    run = recipe.execute(ProdEnv(federation.kits / "alice", federation.address, job_root=tmp_path / "jobs"))
    encrypted = run.get_result(timeout=300)
    plain = tmp_path / "plain.safetensors"
    secret = federation.site_dir("site-1") / "kit" / "he_context.ctx"
    subprocess.run(
        [sys.executable, "-m", "hpcflare.privacy.he", "decrypt", str(encrypted), str(secret), str(plain)],
        check=True,
    )
    np.testing.assert_allclose(safetensors.numpy.load_file(str(plain))["w"], np.full(3, 3.0), atol=1e-2)


def test_a_site_encrypting_under_a_foreign_he_key_is_refused_and_named(federation, tmp_path):
    """site-2's kit holds a key from another provisioning: its encrypted updates are refused at the job's server,
    naming it; the job completes on site-1 (min_clients=1) and its result decrypts with site-1's key."""
    pytest.importorskip("tenseal")
    import shutil
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "hpcflare.privacy.he", "provision", str(federation.kits)], check=True
    )
    other = provision(Project.from_dict({**_project(), "project": "elsewhere"}), tmp_path / "other")
    subprocess.run([sys.executable, "-m", "hpcflare.privacy.he", "provision", str(other)], check=True)
    federation.start_server()
    federation.start_agent("site-1")
    federation.start_agent("site-2")
    shutil.copy(other / "site-2" / "he_context.ctx", federation.site_dir("site-2") / "kit" / "he_context.ctx")
    federation.wait_connected(SITES[:2])
    recipe = federation.recipe(SITES[:2], rounds=2, min_clients=1, name="he-foreign", privacy={"type": "he"})
    with federation.session("alice") as admin:
        job_id = admin.submit_job(recipe.export(tmp_path / "jobs").root)
        status = wait_state(admin, job_id, ("done", "failed"), timeout=300)
        folder = admin.download_job_result(job_id, tmp_path / "results")
    assert status["state"] == "done", status
    server_log = (folder / "job" / "logs" / "server.log").read_text()
    assert "site-2" in server_log and "encrypted under another HE key" in server_log
    plain = tmp_path / "plain.safetensors"
    secret = federation.site_dir("site-1") / "kit" / "he_context.ctx"
    model = folder / "job" / "models" / "global_model.safetensors"
    subprocess.run(
        [sys.executable, "-m", "hpcflare.privacy.he", "decrypt", str(model), str(secret), str(plain)],
        check=True,
    )
    np.testing.assert_allclose(safetensors.numpy.load_file(str(plain))["w"], np.full(3, 2.0), atol=1e-2)


def test_an_institution_runs_its_virtual_clients_behind_one_link(federation, tmp_path):
    federation.up(SITES)
    recipe = federation.recipe(SITES, rounds=2, site_clients={"site-1": 3}, name="virtual-clients")
    with federation.session("alice") as admin:
        job_id = admin.submit_job(recipe.export(tmp_path / "admin-jobs").root)
        status = wait_state(admin, job_id, ("done", "failed"), timeout=300)
        assert status["state"] == "done", status
        folder = admin.download_job_result(job_id, tmp_path / "results")
    # site-1.1..3 add 1.1, 1.2, 1.3; site-2 and site-3 add 2 and 3: the mean of five clients, twice
    weights = safetensors.numpy.load_file(str(folder / "job" / "models" / "global_model.safetensors"))["w"]
    np.testing.assert_allclose(weights, np.full(3, 2 * (1.1 + 1.2 + 1.3 + 2 + 3) / 5), rtol=1e-6)
    server = [
        json.loads(line) for line in (folder / "job" / "logs" / "server.jsonl").read_text().splitlines()
    ]
    folded = [e["msg"] for e in server if e["event"] == "partial_accepted"]
    assert len(folded) == 2 and all(
        "from site-1 over 3 client(s)" in m for m in folded
    )  # one link, one partial
    assert sorted(status["sites"]) == SITES  # the admin sees institutions, not virtual clients


def test_a_site_refuses_more_virtual_clients_than_its_policy_allows(federation, tmp_path):
    federation.start_server()
    federation.start_agent("site-1", max_clients=2)
    federation.wait_connected(["site-1"])
    recipe = federation.recipe(["site-1"], rounds=1, site_clients={"site-1": 3}, name="too-many")
    with federation.session("alice") as admin:
        job_id = admin.submit_job(recipe.export(tmp_path / "admin-jobs").root)
        status = wait_state(admin, job_id, ("failed",), timeout=120)
    detail = status["sites"]["site-1"]["detail"]
    assert "POLICY_REFUSED" in detail and "3 virtual clients" in detail and "max_clients=2" in detail
