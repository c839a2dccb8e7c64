"""GPU per rank: client ranks spread over the node's GPUs, the server and relays get none."""

from __future__ import annotations

import pytest

from hpcflare.runtime.cluster.gpus import plan_devices
from hpcflare.runtime.cluster.ranks import RoleKind


@pytest.mark.parametrize(
    "env, role, expected",
    [
        ({}, RoleKind.CLIENT, None),  # no GPUs: nothing to do
        ({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_LOCALID": "1"}, RoleKind.CLIENT, "1"),  # --gres=gpu:2
        ({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_LOCALID": "2"}, RoleKind.CLIENT, "0"),
        ({"CUDA_VISIBLE_DEVICES": "2,3,5", "SLURM_LOCALID": "4"}, RoleKind.CLIENT, "3"),
        ({"CUDA_VISIBLE_DEVICES": "1", "SLURM_LOCALID": "3"}, RoleKind.CLIENT, None),  # --gpus-per-task: kept
        ({"CUDA_VISIBLE_DEVICES": "0,1", "MPI_LOCALRANKID": "3"}, RoleKind.CLIENT, "1"),  # mpiexec (hydra)
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, RoleKind.CLIENT, None),  # no local rank known: leave it
        ({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_LOCALID": "0"}, RoleKind.SERVER, ""),  # aggregates on the CPU
        ({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_LOCALID": "1"}, RoleKind.RELAY, ""),
        ({"CUDA_VISIBLE_DEVICES": "0,1", "HPCFLARE_SERVER_GPU": "1"}, RoleKind.SERVER, None),
        # a site agent's tasks on one machine: its relay none, its client ranks 1..4 one device each
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3", "HPCFLARE_RANK": "0"}, RoleKind.RELAY, ""),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3", "HPCFLARE_RANK": "4"}, RoleKind.CLIENT, "0"),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3", "HPCFLARE_RANK": "2"}, RoleKind.CLIENT, "2"),
    ],
)
def test_device_plan(env, role, expected):
    devices, why = plan_devices(role, env)
    assert devices == expected, why
