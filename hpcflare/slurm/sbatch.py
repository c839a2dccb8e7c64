"""Materialize the sbatch script for a job from slurm/hpcflare.sbatch.in, so users can read it before submitting."""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write_text
from hpcflare.job import JobDir
from hpcflare.slurm.commands import SlurmCommands
from hpcflare.slurm.spec import Allocation, node_range, parse_sbatch_arg, time_minutes

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "_data"  # slurm/ and launchers/ files, shipped in the wheel too
TEMPLATE = (DATA / "hpcflare.sbatch.in").resolve()
LAUNCHER = (DATA / "hpcflare-rank").resolve()
PARTS = ("all", "server", "clients")


@dataclasses.dataclass
class SbatchSpec:
    job_dir: JobDir
    nodes: int | str = 1  # or a range "2-4": the scheduler picks the count, ranks are spread by --ntasks
    ntasks_per_node: int | None = None  # default: spread 1 + n_clients ranks evenly over the nodes
    partition: str | None = None
    time: str = "00:30:00"
    rendezvous: str = "fs"  # fs | mpi
    python: str = sys.executable
    signal_lead_s: int = 60
    extra_directives: tuple[str, ...] = ()
    part: str = "all"  # all | server | clients (separate allocations: submit the server first)
    server_job_id: str | None = None  # part="clients": the server's Slurm job, whose address to wait for
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # named sbatch options (spec.NAMED)
    sbatch_args: tuple[str, ...] = ()  # anything else, as given to sbatch: "--licenses=fs:1", "--requeue"
    server_exclusive: bool = False
    """The server alone on the allocation's first node; relays and clients fill the others (srun's arbitrary
    distribution over a hostfile the batch step writes)."""

    def tasks(self) -> int:
        config = self.job_dir.load_config()
        units = len(config.client_units())
        return {"all": 1 + config.relays + units, "server": 1, "clients": units}[self.part]

    def allocation(self) -> Allocation:
        per_node = self.ntasks_per_node or (self.per_node() if self.server_exclusive else None)
        return Allocation(
            self.nodes,
            per_node,
            self.partition,
            self.time,
            dict(parse_sbatch_arg(a) for a in self.sbatch_args),
            dict(self.options),
        )

    def client_slots(self, commands: SlurmCommands) -> int | None:
        """Client ranks this allocation holds one per CPU slot (see Allocation.client_slots)."""
        relays = self.job_dir.load_config().relays
        others = {"all": 1 + relays, "server": 1, "clients": 0}[self.part]
        per_node = self.ntasks_per_node
        alloc = dataclasses.replace(self.allocation(), ntasks_per_node=per_node)  # not the ranks' own spread
        return alloc.client_slots(commands, others, server_node=self.server_exclusive)

    def check_capacity(self, commands: SlurmCommands) -> None:
        """Refuse, with the arithmetic, an allocation whose ranks cannot fit the partition's nodes."""
        self.allocation().check_partition(commands, self.tasks())

    def per_node(self) -> int:
        if self.server_exclusive:  # the first node holds the server only; the others hold the rest
            return self.ntasks_per_node or -(-(self.tasks() - 1) // (node_range(self.nodes)[0] - 1))
        return self.allocation().per_node(self.tasks())


def _exclusive_hostfile(spec: SbatchSpec) -> str:
    """Bash that lists the first node once (rank 0, the server), then every other node per_node times, and
    points srun at it: ranks are placed in that order, so no relay or client shares the server's node."""
    folder = shlex.quote(str(spec.job_dir.root / "slurm"))
    hostfile = folder + '/hostfile-"$SLURM_JOB_ID"'
    return (
        "# --server-exclusive: the server alone on the first node\n"
        f"mkdir -p {folder}\n"
        'nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))\n'
        f'{{ echo "${{nodes[0]}}"; for n in "${{nodes[@]:1}}"; do for _ in $(seq {spec.per_node()}); do echo "$n"; '
        f"done; done; }} | head -n {spec.tasks()} > {hostfile}\n"
        f"export SLURM_HOSTFILE={hostfile}\n"
    )


def render_sbatch(spec: SbatchSpec) -> str:
    if spec.part not in PARTS:
        raise ConfigError(f"part must be one of {PARTS}, got {spec.part!r}")
    if spec.part != "all" and spec.rendezvous == "mpi":
        raise ConfigError(
            "separate server/clients allocations cannot share an MPI world: use rendezvous='fs'"
        )
    if spec.part != "all" and spec.job_dir.load_config().relays:
        raise ConfigError(
            "relays run inside the server's allocation: submit jobs with relays as one allocation"
        )
    if spec.part == "clients" and not spec.server_job_id:
        raise ConfigError("part='clients' needs server_job_id (submit the server part first)")
    time_minutes(spec.time)  # refuses what Slurm would not take
    fewest, most = node_range(spec.nodes)
    if spec.server_exclusive and (spec.part != "all" or fewest != most or fewest < 2):
        raise ConfigError(
            "--server-exclusive needs one allocation (not --separate) of a fixed node count >= 2: "
            "the first node runs the server alone"
        )
    alloc = spec.allocation()
    if (
        spec.per_node() * (node_range(spec.nodes)[0] - spec.server_exclusive) + spec.server_exclusive
        < spec.tasks()
    ):
        raise ConfigError(
            f"{spec.nodes} nodes x {spec.per_node()} tasks per node < {spec.tasks()} ranks "
            f"(server, relays and clients); raise nodes or ntasks_per_node"
        )
    # a fixed node count spreads ranks evenly; a range leaves the count to Slurm, so ask for the ranks in all.
    # Slurm refuses --ntasks-per-node above a node's CPUs even with --overcommit; --ntasks is accepted there
    overcommit = bool(alloc.options.get("overcommit") or alloc.additional.get("overcommit"))
    tasks_directive = (
        f"#SBATCH --ntasks-per-node={spec.per_node()}"
        if alloc.fixed_nodes and not overcommit
        else f"#SBATCH --ntasks={spec.tasks()}"
    )
    directives = spec.allocation().directives() + list(spec.extra_directives)
    config = spec.job_dir.load_config()
    values = {
        "job_name": config.name,
        "nodes": spec.nodes,
        "tasks_directive": tasks_directive,
        "time": spec.time,
        "output": shlex.quote(str(spec.job_dir.log_dir / "slurm-%j.out")),
        "signal_lead_s": spec.signal_lead_s,
        "max_requeues": config.load_settings().max_requeues,
        "extra_directives": "\n".join(directives),
        "python": shlex.quote(spec.python),
        # --label: every line of the shared output file says which rank wrote it ("3: ...")
        "srun_args": ("--mpi=pmi2 " if spec.rendezvous == "mpi" else "")
        + "--label --kill-on-bad-exit=0"
        + (f" --distribution=arbitrary --ntasks={spec.tasks()}" if spec.server_exclusive else ""),
        "launcher": shlex.quote(str(LAUNCHER)),
        "job_dir": shlex.quote(str(spec.job_dir.root)),
        "part": {
            "all": "server + clients in one allocation",
            "server": "server allocation",
            "clients": "clients allocation",
        }[spec.part],
        "rank_args": {
            "all": f"--role auto --rendezvous {spec.rendezvous}",
            "server": "--role server --bind 0.0.0.0",
            "clients": "--role client",
        }[spec.part],
        "exports": (f"export HPCFLARE_SERVER_JOB={spec.server_job_id}\n" if spec.part == "clients" else "")
        + (_exclusive_hostfile(spec) if spec.server_exclusive else ""),
        # --separate: a server that fails takes its clients' allocation with it instead of leaving it waiting
        "on_failure": (
            f"\nclients={shlex.quote(str(spec.job_dir.root / 'slurm_clients_job_id'))}\n"
            f'if [ "$rc" -ne 0 ] && [ -f "$clients" ]; then echo "[hpcflare] server failed: cancelling the '
            f'clients job"; scancel "$(cat "$clients")"; fi'
        )
        if spec.part == "server"
        else "",
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    leftover = re.findall(r"\{\{\w+\}\}", text)
    if leftover:
        raise ConfigError(f"sbatch template {TEMPLATE} has unfilled placeholders {leftover}")
    return text


def write_sbatch(spec: SbatchSpec) -> Path:
    path = spec.job_dir.root / ("job.sbatch" if spec.part == "all" else f"job-{spec.part}.sbatch")
    atomic_write_text(path, render_sbatch(spec))
    return path
