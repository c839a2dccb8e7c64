"""Rendezvous contract: every implementation publishes and looks up the server across real processes.

The same two-rank script runs under each implementation: rank 0 publishes, rank 1 looks the name up.
``fs`` ranks are two plain processes sharing a directory; ``mpi`` ranks are started by the real mpiexec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcflare import errors
from hpcflare.runtime.cluster.rendezvous import RENDEZVOUS, FileRendezvous, MpiRendezvous, incarnation

MPIEXEC = Path(sys.executable).with_name("mpiexec")

SCRIPT = """
import os, sys
from hpcflare.runtime.cluster.rendezvous import FileRendezvous, MpiRendezvous
kind, directory, rank = sys.argv[1], sys.argv[2], int(os.environ.get("PMI_RANK", os.environ.get("FAKE_RANK", "0")))
rdzv = FileRendezvous(directory) if kind == "fs" else MpiRendezvous(timeout=30)
if rank == 0:
    rdzv.publish("server", "10.1.2.3:4567", "life-1")
    print("published", flush=True)
else:
    print("found", rdzv.lookup("server", 30).address, flush=True)
"""


def _run_two_ranks(kind: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "HPCFLARE_"))}
    if kind == "mpi":
        out = subprocess.run(
            [str(MPIEXEC), "-n", "2", sys.executable, str(script), kind, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return sorted(out.stdout.split("\n"))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), kind, str(tmp_path)],
            env={**env, "FAKE_RANK": str(r)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in (1, 0)
    ]  # the looker starts first
    lines = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return sorted("".join(lines).split("\n"))


@pytest.mark.parametrize("kind", sorted(RENDEZVOUS))
def test_published_address_is_found_by_another_rank(kind, tmp_path):
    if kind == "mpi" and not MPIEXEC.exists():
        pytest.skip("mpiexec not installed (pip install mpich)")
    assert [line for line in _run_two_ranks(kind, tmp_path) if line] == ["found 10.1.2.3:4567", "published"]


def test_file_lookup_times_out_naming_the_setting(tmp_path):
    with pytest.raises(errors.RendezvousTimeoutError, match="settings.rendezvous_timeout=0.3s"):
        FileRendezvous(tmp_path).lookup("server", 0.3)


def test_previous_life_of_a_requeued_job_is_never_used(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCFLARE_SERVER_JOB", raising=False)
    monkeypatch.setenv("HPCFLARE_INCARNATION", "slurm-7-0")
    rdzv = FileRendezvous(tmp_path)
    rdzv.publish("server", "old:1", incarnation())
    monkeypatch.setenv("HPCFLARE_INCARNATION", "slurm-7-1")  # requeued: a new life
    assert rdzv.read("server") is None
    rdzv.publish("server", "new:2", incarnation())
    assert rdzv.lookup("server", 1).address == "new:2"


def test_relays_cannot_be_found_over_mpi():
    with pytest.raises(errors.ConfigError, match="rendezvous='fs'"):
        MpiRendezvous().lookup("relay-1", 1)


def _fake_mpi(tmp_path, body: str):
    pkg = tmp_path / "fake" / "mpi4py"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "MPI.py").write_text(body)
    return str(tmp_path / "fake")


def test_an_mpi_initialisation_that_hangs_is_ended_at_the_rendezvous_deadline(tmp_path):
    """MPI_Init blocks in C when another rank died in srun's PMI exchange; the rank must not wait for good."""
    import subprocess
    import sys
    import time

    from hpcflare.exitcodes import describe

    fake = _fake_mpi(tmp_path, "import time\ntime.sleep(60)\n")  # stands for MPI_Init stuck in the PMI fence
    code = "from hpcflare.runtime.cluster.rendezvous import import_mpi; import_mpi(1); print('returned')"
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "PYTHONPATH": fake},
    )
    assert out.returncode == -14 and "returned" not in out.stdout  # SIGALRM, after ~1 s, not 60
    assert time.monotonic() - t0 < 20
    assert "settings.rendezvous_timeout" in out.stderr
    assert "rendezvous_timeout" in describe(128 + 14) and "rendezvous 'fs'" in describe(128 + 14)

    fast = _fake_mpi(tmp_path / "ok", "COMM_WORLD = 'world'\n")
    code = (
        "import time; from hpcflare.runtime.cluster.rendezvous import import_mpi; "
        "print(import_mpi(1).COMM_WORLD); time.sleep(2); print('alive')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "PYTHONPATH": fast},
    )
    assert out.returncode == 0 and out.stdout.split() == ["world", "alive"]  # the alarm is off once MPI is up
