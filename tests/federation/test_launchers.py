"""One contract for every launcher (local processes, sbatch jobs): start, watch, read the exit code, cancel."""

from __future__ import annotations

import os
import sys
import time

import pytest

from hpcflare.federation.launchers import LocalLauncher, RankState, Resources, SlurmLauncher


@pytest.fixture(params=["local", "slurm"])
def launcher(request):
    if request.param == "slurm":
        request.getfixturevalue("slurm")
        return SlurmLauncher(Resources(partition="debug", time_minutes=5))
    return LocalLauncher()


def _until(launcher, record, states, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        status = launcher.status(record)
        if status.state in states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_a_rank_exit_code_is_read_back(launcher, tmp_path):
    command = [
        sys.executable,
        "-c",
        "import os, sys; open('ran', 'w').write(os.environ['GREETING']); sys.exit(3)",
    ]
    record = launcher.start("rank", command, {"GREETING": "hello"}, tmp_path, Resources())
    status = _until(launcher, record, (RankState.EXITED, RankState.LOST))
    assert (status.state, status.exit_code) == (RankState.EXITED, 3)
    assert (tmp_path / "ran").read_text() == "hello"  # the environment and working folder it was given


def test_a_cancelled_rank_ends(launcher, tmp_path):
    record = launcher.start(
        "rank", [sys.executable, "-c", "import time; time.sleep(600)"], {}, tmp_path, Resources()
    )
    _until(launcher, record, (RankState.RUNNING,))
    launcher.cancel(record)
    status = _until(launcher, record, (RankState.EXITED, RankState.LOST), timeout=120)
    assert status.exit_code != 0


def test_a_recycled_pid_is_not_taken_for_the_rank(tmp_path):
    record = {"kind": "local", "pid": os.getpid(), "exit_file": str(tmp_path / "rank.exit"), "output": "x"}
    status = LocalLauncher().status(record)  # this pid is alive, but it is not that rank's wrapper
    assert status.state == RankState.LOST and "without leaving its exit code" in status.detail


def test_several_tasks_each_know_their_rank_and_the_first_failure_is_kept(launcher, tmp_path):
    """An institution's relay and client ranks: N tasks of one launch, numbered as srun numbers them."""
    code = (
        "import os, sys; rank = os.environ.get('HPCFLARE_RANK') or os.environ['SLURM_PROCID']; "
        "world = os.environ.get('HPCFLARE_WORLD') or os.environ['SLURM_NTASKS']; "
        "open(f'task-{rank}', 'w').write(world); sys.exit(4 if rank == '1' else 0)"
    )
    record = launcher.start("site", [sys.executable, "-c", code], {}, tmp_path, Resources(), tasks=3)
    status = _until(launcher, record, (RankState.EXITED, RankState.LOST))
    assert (status.state, status.exit_code) == (RankState.EXITED, 4)
    assert {p.name: p.read_text() for p in tmp_path.glob("task-*")} == {f"task-{i}": "3" for i in range(3)}
