"""MpiEnv on a system MPI: mpi4py built from source against the machine's MPICH (Debian's, not the PyPI
`mpich` wheel of the `[mpi]` extra), every rank started by the system's own `mpiexec`.

That environment takes minutes to build, so it is made once outside pytest (`.ci/run` builds `.venv-sysmpi`,
see the README) and named by HPCFLARE_SYSTEM_MPI_PYTHON; without it this test is skipped with that hint
(HPCFLARE_REQUIRE_SYSTEM_MPI=1, as in CI, turns the skip into a failure).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from tests.conftest import HELLO_MODEL, REPO, load_result

PYTHON = os.environ.get("HPCFLARE_SYSTEM_MPI_PYTHON", "")
MPIEXEC = os.environ.get("HPCFLARE_SYSTEM_MPIEXEC", shutil.which("mpiexec.mpich") or "")
HINT = (
    "no system-MPI environment: build one as .ci/run does (apt-get install mpich libmpich-dev; a venv with "
    "`pip install -e .` and `MPICC=mpicc.mpich pip install --no-binary mpi4py 'mpi4py>=4.0,<4.1'`) and set "
    "HPCFLARE_SYSTEM_MPI_PYTHON to its python"
)

if not (PYTHON and os.path.exists(PYTHON) and MPIEXEC):
    if os.environ.get("HPCFLARE_REQUIRE_SYSTEM_MPI") == "1":
        raise RuntimeError(f"HPCFLARE_REQUIRE_SYSTEM_MPI=1 but {HINT}")
    pytestmark = pytest.mark.skip(reason=HINT)


def _in_system_env(code: str, timeout: float) -> str:
    proc = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_environment_uses_the_system_mpi_not_the_wheel():
    facts = json.loads(
        _in_system_env(
            """
        import json, sys, importlib.metadata as md
        from mpi4py import MPI
        try:
            wheel = md.version("mpich")
        except md.PackageNotFoundError:
            wheel = None
        libraries = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libmpi" in line})
        print(json.dumps({"library": MPI.Get_library_version(), "wheel": wheel, "loaded": libraries,
                          "prefix": sys.prefix}))
    """,
            60,
        )
    )
    assert facts["wheel"] is None  # the PyPI mpich wheel is not in this environment
    assert "MPICH" in facts["library"]
    assert facts["loaded"] and not any(path.startswith(facts["prefix"]) for path in facts["loaded"]), facts


def test_an_mpienv_job_runs_on_the_system_mpi(make_recipe, tmp_path):
    client = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()
    job_dir = make_recipe(client, n_clients=3, min_clients=3, num_rounds=2).export(tmp_path / "jobs")
    out = _in_system_env(
        f"""
        from hpcflare.env import MpiEnv
        from hpcflare.job import JobDir
        run = MpiEnv(job_root={str(tmp_path / "jobs")!r}, mpiexec={MPIEXEC!r}).deploy(JobDir({str(job_dir.root)!r}))
        print(run.get_result(timeout=180))
    """,
        240,
    )
    result = load_result(out.strip().splitlines()[-1])
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)  # hello-numpy adds 1 per round
    mpiexec_log = (job_dir.log_dir / "mpiexec.out").read_text(errors="replace")
    assert "Traceback" not in mpiexec_log
    started = [json.loads(line) for line in (job_dir.log_dir / "server.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "job_completed" for e in started)


@pytest.mark.slurm
def test_a_slurm_job_rendezvouses_over_the_system_mpi(slurm, make_recipe, tmp_path):
    """`hpcflare job submit --rendezvous mpi` from the system-MPI environment: srun --mpi=pmi2 starts its
    python on two nodes and the ranks exchange addresses over Debian's MPICH."""
    from hpcflare.slurm.commands import SlurmCommands
    from tests.slurm.test_real_jobs import wait_done

    client = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()
    job_dir = make_recipe(client, n_clients=3, min_clients=3, num_rounds=2).export(tmp_path / "jobs")
    _in_system_env(
        f"""
        from hpcflare.cli import main
        raise SystemExit(main(["job", "submit", {str(job_dir.root)!r}, "--nodes", "2", "--rendezvous", "mpi",
                               "--time", "00:05:00"]))
    """,
        60,
    )
    assert PYTHON in (job_dir.root / "job.sbatch").read_text()  # the ranks run the system-MPI environment
    wait_done(SlurmCommands(), (job_dir.root / "slurm_job_id").read_text().strip(), 240)
    assert job_dir.read_status()["state"] == "completed", job_dir.read_status()
    np.testing.assert_array_equal(load_result(job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 2)
    out = next(job_dir.log_dir.glob("slurm-*.out")).read_text()
    assert out.count("from MPI broadcast") == 3
