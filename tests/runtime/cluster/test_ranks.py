"""Role by rank: relays spread over the nodes of a Slurm step, every site exactly once, the same on every rank."""

from __future__ import annotations

import pytest

from hpcflare.job import JobConfig
from hpcflare.runtime.cluster.ranks import RoleKind, relay_ranks, role_for_rank, tasks_per_node


def config(clients: int, relays: int) -> JobConfig:
    return JobConfig(
        name="t",
        job_id="t-1",
        num_rounds=1,
        min_clients=1,
        clients=[f"site-{i}" for i in range(1, clients + 1)],
        train_script="app/c.py",
        relays=relays,
    )


@pytest.mark.parametrize(
    "text, expected", [("5,1(x2)", [5, 1, 1]), ("4(x3)", [4, 4, 4]), ("2", [2]), ("", None), ("weird", None)]
)
def test_tasks_per_node_parses_slurms_compressed_form(text, expected):
    assert tasks_per_node({"SLURM_STEP_TASKS_PER_NODE": text}) == expected


@pytest.mark.parametrize(
    "relays, per_node, expected",
    [
        (3, [4, 4, 4], [1, 4, 8]),  # one per node (node 0's first rank is the server)
        (2, [4, 4, 4, 4], [1, 8]),  # one per two nodes
        (4, [3, 3], [1, 2, 3, 4]),  # more relays than nodes: round robin
        (2, None, [1, 2]),  # no layout (mpiexec, one node): ranks 1..R
    ],
)
def test_relays_are_spread_over_nodes(relays, per_node, expected):
    assert relay_ranks(relays, per_node) == expected


def test_every_site_exactly_once_and_relays_on_distinct_nodes():
    per_node = [4, 4, 4]
    cfg = config(clients=8, relays=3)
    roles = [role_for_rank(r, 12, cfg, per_node) for r in range(12)]
    assert roles[0].kind == RoleKind.SERVER
    assert [r.site for r in roles if r.kind == RoleKind.CLIENT] == cfg.clients
    relay_nodes = [r // 4 for r, role in enumerate(roles) if role.kind == RoleKind.RELAY]
    assert sorted(relay_nodes) == [0, 1, 2]
    # a layout that does not describe this world (another launcher) falls back to ranks 1..R
    assert [role_for_rank(r, 12, cfg, [5, 5]).kind for r in (1, 2, 3)] == [RoleKind.RELAY] * 3


def test_client_ranks_host_their_share_of_sites_in_order():
    cfg = config(clients=10, relays=0)
    cfg.clients_per_rank = 4
    roles = [role_for_rank(r, 4, cfg) for r in range(4)]
    assert [(r.kind, r.site, r.sites) for r in roles[1:]] == [
        (RoleKind.CLIENT, "client-rank-1", tuple(cfg.clients[0:4])),
        (RoleKind.CLIENT, "client-rank-2", tuple(cfg.clients[4:8])),
        (RoleKind.CLIENT, "client-rank-3", tuple(cfg.clients[8:10])),
    ]
    with pytest.raises(Exception, match=r"request at least 3 tasks \(4 for every client\)"):
        cfg.min_clients = 5
        role_for_rank(1, 2, cfg)  # 1 server + 1 client rank of 4 sites cannot reach min_clients=5
