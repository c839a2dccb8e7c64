"""Every common sbatch option by name on both routes (the sbatch template and submitit), a pass-through for
the rest, and the ranks-per-node arithmetic checked against the real partition before anything is submitted."""

from __future__ import annotations

import pytest

from hpcflare.cli import main
from hpcflare.env import SlurmEnv
from hpcflare.errors import ConfigError
from hpcflare.slurm.commands import SlurmCommands
from hpcflare.slurm.sbatch import SbatchSpec, render_sbatch
from tests.conftest import SLOW

OPTIONS = dict(
    account="proj1",
    qos="normal",
    cpus_per_task=2,
    mem="4G",
    gres="gpu:1",
    constraint="cpu",
    exclusive=True,
    reservation="maint",
    mail_type="END",
    mail_user="me@example.org",
)
LINES = [
    "#SBATCH --account=proj1",
    "#SBATCH --qos=normal",
    "#SBATCH --cpus-per-task=2",
    "#SBATCH --mem=4G",
    "#SBATCH --gres=gpu:1",
    "#SBATCH --constraint=cpu",
    "#SBATCH --exclusive",
    "#SBATCH --reservation=maint",
    "#SBATCH --mail-type=END",
    "#SBATCH --mail-user=me@example.org",
    "#SBATCH --licenses=fs:1",
]


def test_sbatch_route_writes_every_named_option_and_the_pass_through(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    text = render_sbatch(SbatchSpec(job_dir, nodes=1, options=OPTIONS, sbatch_args=("--licenses=fs:1",)))
    for line in LINES:
        assert line in text


def test_submitit_route_shows_the_same_options_in_its_dry_run(make_recipe, tmp_path):
    env = SlurmEnv(
        nodes=1, job_root=tmp_path / "jobs", slurm_additional_parameters={"licenses": "fs:1"}, **OPTIONS
    )
    text = env.dry_run(make_recipe(SLOW, n_clients=2))
    for line in LINES:
        assert line in text


def test_cli_takes_the_options_by_name(make_recipe, tmp_path, capsys):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    assert (
        main(
            [
                "job",
                "submit",
                str(job_dir.root),
                "--dry-run",
                "--account",
                "proj1",
                "--qos",
                "normal",
                "--cpus-per-task",
                "2",
                "--mem",
                "4G",
                "--gres",
                "gpu:1",
                "--constraint",
                "cpu",
                "--exclusive",
                "--reservation",
                "maint",
                "--mail-type",
                "END",
                "--mail-user",
                "me@example.org",
                "--sbatch-arg=--licenses=fs:1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for line in LINES:
        assert line in out


def test_unknown_named_option_is_refused(make_recipe, tmp_path):
    with pytest.raises(ConfigError, match="unknown sbatch option"):
        SlurmEnv(nodes=1, job_root=tmp_path / "jobs", acount="typo")


def fake_sinfo(stdout: str):
    import subprocess

    def run(argv, timeout):
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    return run


def test_ranks_that_cannot_fit_the_partition_are_explained(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=63).export(tmp_path / "jobs")  # 64 ranks
    spec = SbatchSpec(job_dir, nodes=4, partition="debug")
    with pytest.raises(
        ConfigError,
        match=r"64 ranks on 4 node\(s\) = 16 per node x 1 CPU\(s\) each = 16 CPUs per "
        r"node; partition debug has 8 CPUs per node: use --nodes 8",
    ):
        spec.check_capacity(SlurmCommands(fake_sinfo("debug* 8\n")))
    SbatchSpec(job_dir, nodes=4, partition="debug", options={"overcommit": True}).check_capacity(
        SlurmCommands(fake_sinfo("debug* 8\n"))
    )  # asked for: no complaint


def test_auto_packs_sites_into_the_ranks_the_partition_can_hold(make_recipe, tmp_path):
    from hpcflare.runtime.client_rank import settle_clients_per_rank

    job_dir = make_recipe(SLOW, n_clients=128).export(tmp_path / "jobs")
    eight = SlurmCommands(fake_sinfo("debug* 8\n"))
    assert SbatchSpec(job_dir, nodes=4).client_slots(eight) == 31  # 4 x 8 CPUs, one for the server
    assert SbatchSpec(job_dir, nodes=4, options={"cpus_per_task": 2}).client_slots(eight) == 15
    assert SbatchSpec(job_dir, nodes=4, ntasks_per_node=5).client_slots(eight) == 19
    assert (
        SbatchSpec(job_dir, nodes=4, server_exclusive=True).client_slots(eight) == 24
    )  # first node: server only
    assert SbatchSpec(job_dir, nodes=4, part="clients").client_slots(eight) == 32  # --separate's clients job
    assert SbatchSpec(job_dir, nodes=4, options={"overcommit": True}).client_slots(eight) is None
    assert (
        SbatchSpec(job_dir, nodes=4).client_slots(SlurmCommands(fake_sinfo(""))) is None
    )  # sinfo says nothing
    spec = SbatchSpec(job_dir, nodes=4, partition="debug")
    config = settle_clients_per_rank(job_dir, None, lambda config: spec.client_slots(eight))
    assert config.clients_per_rank == 5 and spec.tasks() == 1 + 26  # 128 sites in 26 ranks of <= 5
    spec.check_capacity(eight)  # now fits: 27 ranks = 7 per node of 8 CPUs
    assert "#SBATCH --ntasks-per-node=7" in render_sbatch(spec)


@pytest.mark.slurm
def test_real_partition_is_read_before_submitting(slurm, make_recipe, tmp_path, capsys):
    job_dir = make_recipe(SLOW, n_clients=19, min_clients=19, train_args="0.2").export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--nodes", "1", "--clients-per-rank", "1"]) == 1
    err = capsys.readouterr().err  # a rank per site, asked for: 20 ranks on 1 node of 8 CPUs
    assert "20 ranks on 1 node(s)" in err and "has 8 CPUs per node" in err and "--nodes 3" in err
    assert not (job_dir.root / "slurm_job_id").exists()
    job_dir.save_config(
        job_dir.load_config().__class__(**{**vars(job_dir.load_config()), "clients_per_rank": "auto"})
    )
    assert main(["job", "submit", str(job_dir.root), "--nodes", "1", "--dry-run"]) == 0
    assert "#SBATCH --ntasks-per-node=8" in capsys.readouterr().out
    assert job_dir.load_config().clients_per_rank == "auto"  # a dry run leaves job.yaml as it was
    # by default the 19 sites are packed into the 7 ranks the node has left beside the server, and the job runs
    assert main(["job", "submit", str(job_dir.root), "--nodes", "1", "--time", "00:05:00"]) == 0
    assert job_dir.load_config().clients_per_rank == 3
    from tests.slurm.test_real_jobs import wait_done

    wait_done(SlurmCommands(), (job_dir.root / "slurm_job_id").read_text().strip(), 240)
    status = job_dir.read_status()
    assert status["state"] == "completed", status


def test_node_range_asks_for_the_ranks_not_a_per_node_count(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=3).export(tmp_path / "jobs")
    text = render_sbatch(SbatchSpec(job_dir, nodes="1-3"))
    assert "#SBATCH --nodes=1-3" in text and "#SBATCH --ntasks=4" in text and "--ntasks-per-node" not in text
    with pytest.raises(ConfigError, match="range like 2-4"):
        render_sbatch(SbatchSpec(job_dir, nodes="two"))
    with pytest.raises(ConfigError, match="submitit needs a fixed node count"):
        SlurmEnv(nodes="1-3", job_root=tmp_path / "jobs").dry_run(job_dir)


@pytest.mark.slurm
def test_node_range_job_runs_on_the_real_cluster(slurm, make_recipe, tmp_path):
    from tests.slurm.test_real_jobs import wait_done

    job_dir = make_recipe(SLOW, n_clients=3, min_clients=3, train_args="0.5").export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--nodes", "1-3", "--time", "00:05:00"]) == 0
    wait_done(SlurmCommands(), (job_dir.root / "slurm_job_id").read_text().strip(), 180)
    assert job_dir.read_status()["state"] == "completed"


def test_server_exclusive_places_ranks_through_a_hostfile(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=5, min_clients=5).export(tmp_path / "jobs")
    text = render_sbatch(SbatchSpec(job_dir, nodes=3, server_exclusive=True))
    assert "#SBATCH --ntasks-per-node=3" in text  # 5 clients over the 2 nodes the server leaves
    assert "--distribution=arbitrary --ntasks=6" in text and "export SLURM_HOSTFILE=" in text
    with pytest.raises(ConfigError, match="fixed node count >= 2"):
        render_sbatch(SbatchSpec(job_dir, nodes=1, server_exclusive=True))
    with pytest.raises(ConfigError, match="fixed node count"):
        render_sbatch(SbatchSpec(job_dir, nodes="2-4", server_exclusive=True))


@pytest.mark.slurm
def test_overcommit_is_accepted_by_the_real_slurm(slurm, make_recipe, tmp_path):
    """Slurm refuses --ntasks-per-node above a node's CPUs even with --overcommit; the script asks --ntasks."""
    import time

    from tests.conftest import HELLO_MODEL, REPO, load_result

    job_dir = make_recipe(
        (REPO / "recipes" / "hello-numpy" / "client.py").read_text(), n_clients=9, min_clients=9
    ).export(tmp_path / "jobs")  # 10 ranks on 1 node of 8 CPUs
    assert (
        main(["job", "submit", str(job_dir.root), "--nodes", "1", "--overcommit", "--time", "00:05:00"]) == 0
    )
    assert "#SBATCH --ntasks=10" in (job_dir.root / "job.sbatch").read_text()
    deadline = time.monotonic() + 180
    while job_dir.read_status().get("state") not in ("completed", "failed", "aborted"):
        assert time.monotonic() < deadline, "overcommitted job did not finish"
        time.sleep(1)
    assert job_dir.read_status()["state"] == "completed"
    assert (load_result(job_dir.result_model_path)["numpy_key"] == HELLO_MODEL + 1).all()
