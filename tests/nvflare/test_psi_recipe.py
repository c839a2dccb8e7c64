"""NVFlare's DhPSIRecipe runs unchanged through ``hpcflare nvflare``: each site's LocalPSI (its own class,
rebuilt at the site) loads its IDs, and every site's intersection file holds exactly the IDs all sites share."""

from __future__ import annotations

import pytest

from tests.nvflare.test_job_py import nvflare, workspace_of

pytest.importorskip("cryptography")


def test_dh_psi_recipe_writes_the_true_intersection_at_every_site(tmp_path):
    data = tmp_path / "data"
    shared = [f"user{i}@example.org" for i in range(40)]
    for n, site in enumerate(("site-1", "site-2", "site-3")):
        own = [f"{site}-only{i}@example.org" for i in range(25 + n)]
        partly = [f"pair{i}@example.org" for i in range(10)] if site != "site-3" else []
        (data / site).mkdir(parents=True)
        rows = "\n".join(shared + own + partly)
        (data / site / "data.csv").write_text(f"email_address\n{rows}\n")
    done = nvflare(tmp_path, "job_psi.py", str(data), str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Job Status: completed" in done.stdout
    workspace = workspace_of(done.stdout)
    assert (workspace / "app" / "local_psi.py").is_file()  # the site component's class travelled with the job
    for site in ("site-1", "site-2", "site-3"):
        found = (workspace / "sites" / site / "psi" / "intersection.txt").read_text().split()
        assert sorted(found) == sorted(shared), site


@pytest.mark.parametrize("path", ["/etc/intersection.txt", "../../elsewhere.txt"])
def test_an_output_path_outside_the_sites_workspace_is_refused(tmp_path, path):
    """The job names output_path; a site writes only inside its own workspace."""
    from hpcflare.client.psi_spec import output_file
    from hpcflare.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves the site's workspace"):
        output_file(tmp_path, path)
    assert output_file(tmp_path, "psi/intersection.txt") == (tmp_path / "psi" / "intersection.txt").resolve()
