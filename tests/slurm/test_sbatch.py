"""The sbatch template: a golden file, and clear errors for impossible layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcflare.errors import ConfigError
from hpcflare.slurm.sbatch import REPO, SbatchSpec, render_sbatch

GOLDEN = Path(__file__).parent / "golden" / "hpcflare.sbatch"


def normalized(text: str, job_dir: Path) -> str:
    return text.replace(str(job_dir), "<JOB_DIR>").replace(str(REPO), "<REPO>")


def test_rendered_script_matches_golden(make_recipe, tmp_path):
    job_dir = make_recipe("print(1)\n", n_clients=5, min_clients=3).export(
        tmp_path / "jobs", job_id="golden-job"
    )
    text = render_sbatch(
        SbatchSpec(
            job_dir,
            nodes=2,
            partition="debug",
            time="01:00:00",
            rendezvous="mpi",
            python="/opt/venv/bin/python",
            extra_directives=("#SBATCH --account=fl",),
        )
    )
    assert normalized(text, job_dir.root) == GOLDEN.read_text()


def test_impossible_layouts_are_refused(make_recipe, tmp_path):
    job_dir = make_recipe("print(1)\n", n_clients=5, min_clients=3).export(tmp_path / "jobs")
    with pytest.raises(ConfigError, match="2 nodes x 2 tasks per node < 6 ranks"):
        render_sbatch(SbatchSpec(job_dir, nodes=2, ntasks_per_node=2))
    with pytest.raises(ConfigError, match="not a Slurm time limit"):
        render_sbatch(SbatchSpec(job_dir, time="soon"))


def test_array_jobs_are_refused_on_both_routes(make_recipe, tmp_path):
    from hpcflare.env import SlurmEnv

    job_dir = make_recipe("print(1)\n", n_clients=2).export(tmp_path / "jobs")
    with pytest.raises(
        ConfigError, match="array jobs .* would run the same job directory in every array task"
    ):
        render_sbatch(SbatchSpec(job_dir, nodes=1, sbatch_args=("--array=0-3",)))
    with pytest.raises(ConfigError, match="array jobs"):
        SlurmEnv(nodes=1, slurm_additional_parameters={"array": "0-3"})


def test_the_time_limit_trap_stops_requeueing_at_max_requeues(make_recipe, tmp_path):
    job_dir = make_recipe("print(1)\n", n_clients=2, settings={"max_requeues": 7}).export(tmp_path / "jobs")
    text = render_sbatch(SbatchSpec(job_dir, nodes=1))
    assert '[ "${SLURM_RESTART_COUNT:-0}" -ge 7 ]' in text and "settings.max_requeues=7" in text
