"""What a job asks Slurm for, in one place for both routes: the sbatch template (``hpcflare job submit``)
and submitit (``SlurmEnv``). One time-limit parser, one ranks-per-node rule, one set of extra options."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from hpcflare.errors import ConfigError

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")


def time_minutes(value: str | int) -> int:
    """A Slurm time limit (MM, HH:MM:SS, MM:SS, D-HH[:MM[:SS]] or minutes as an int) in whole minutes,
    rounded up so the job never gets less than asked for."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"time {value!r} must be at least 1 minute")
        return value
    if not isinstance(value, str) or not _TIME.match(value):
        raise ConfigError(f"time {value!r} is not a Slurm time limit (e.g. 30, 01:00:00, 1-00:00:00)")
    days = 0
    if "-" in value:
        head, value = value.split("-", 1)
        days = int(head)
        parts = [int(p) for p in value.split(":")] + [0] * (3 - value.count(":") - 1)
        hours, minutes, seconds = parts
    else:
        parts = [int(p) for p in value.split(":")]
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, parts[0], parts[-1]), 3: tuple(parts)}[
            len(parts)
        ]
    return days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


NAMED = (
    "account",
    "qos",
    "cpus_per_task",
    "mem",
    "mem_per_cpu",
    "gres",
    "gpus",
    "gpus_per_task",
    "constraint",
    "exclusive",
    "reservation",
    "mail_type",
    "mail_user",
    "overcommit",
)
"""sbatch options hpcflare takes by name (SlurmEnv keywords, `hpcflare job submit --account ...`); anything else
goes through ``additional`` (SlurmEnv(slurm_additional_parameters=...), ``--sbatch-arg=--key=value``)."""
_SUBMITIT_NAMES = {
    "account",
    "qos",
    "cpus_per_task",
    "mem",
    "mem_per_cpu",
    "gres",
    "gpus_per_task",
    "constraint",
    "exclusive",
    "mail_type",
    "mail_user",
}  # what submitit's SlurmExecutor takes as keywords


def node_range(value: Any) -> tuple[int, int]:
    """--nodes as Slurm takes it: N or MIN-MAX (the scheduler picks a count in the range) -> (min, max)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d+(-\d+)?", value):
        low, _, high_text = value.partition("-")
        low, high = int(low), int(high_text or low)
    else:
        raise ConfigError(f"nodes must be a whole number or a range like 2-4, got {value!r}")
    if not 1 <= low <= high:
        raise ConfigError(f"nodes {value!r}: need 1 <= min <= max")
    return low, high


def parse_sbatch_arg(arg: str) -> tuple[str, Any]:
    """``--key=value`` / ``--flag`` (as given to sbatch) -> (key with underscores, value or True)."""
    if not arg.startswith("--") or len(arg) < 3:
        raise ConfigError(f"sbatch argument {arg!r} must look like --option=value or --flag")
    key, sep, value = arg[2:].partition("=")
    return key.replace("-", "_"), (value if sep else True)


@dataclasses.dataclass
class Allocation:
    """Nodes, tasks, partition, time limit, the named options and any other sbatch option (``additional``)."""

    nodes: int = 1
    ntasks_per_node: int | None = None  # default: spread the ranks evenly over the nodes
    partition: str | None = None
    time: str | int = "00:30:00"
    additional: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Named options (see NAMED) that are set; None/False values are left out."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(NAMED))
        if unknown:
            raise ConfigError(
                f"unknown sbatch option(s) {unknown}; by name hpcflare takes {list(NAMED)}, anything "
                "else goes in slurm_additional_parameters / --sbatch-arg"
            )
        self.options = {k: v for k, v in self.options.items() if v not in (None, False)}
        if "array" in self.additional:
            raise ConfigError(
                f"sbatch array jobs (array={self.additional['array']!r}) would run the same job directory in "
                "every array task: export one job per configuration and submit each (a loop over `hpcflare job "
                "submit`), or use clients_per_rank / more nodes for more sites in one job"
            )
        node_range(self.nodes)

    def cpus_per_rank(self) -> int:
        return int(self.options.get("cpus_per_task", 1))

    @property
    def fixed_nodes(self) -> bool:
        low, high = node_range(self.nodes)
        return low == high

    def per_node(self, ranks: int) -> int:
        """Ranks per node; with a node range, on the fewest nodes Slurm may give (the worst case)."""
        return self.ntasks_per_node or math.ceil(ranks / node_range(self.nodes)[0])

    def minutes(self) -> int:
        return time_minutes(self.time)

    def directives(self) -> list[str]:
        """``#SBATCH`` lines for what the template does not spell out itself."""
        lines = [f"#SBATCH --partition={self.partition}"] if self.partition else []
        for key, value in {**self.options, **self.additional}.items():
            flag = key.replace("_", "-")
            lines.append(f"#SBATCH --{flag}" if value is True else f"#SBATCH --{flag}={value}")
        return lines

    def submitit_parameters(self, ranks: int) -> dict[str, Any]:
        """The same request as SlurmExecutor.update_parameters() keywords (public submitit API)."""
        extra = dict(self.additional)
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "ntasks_per_node": self.per_node(ranks),
            "time": self.minutes(),
            "additional_parameters": extra,
        }
        for key, value in self.options.items():
            if key in _SUBMITIT_NAMES:
                params[key] = value
            else:  # gpus, reservation, overcommit: no submitit keyword, the same sbatch line through its pass-through
                extra[key] = value
        if self.partition:
            params["partition"] = self.partition
        return params

    def client_slots(self, commands: Any, others: int, server_node: bool = False) -> int | None:
        """Client ranks that fit this allocation, one per CPU slot (cpus-per-task CPUs each), beside ``others``
        ranks (the server, relays), for clients_per_rank 'auto': more sites than slots are packed into ranks
        instead of asking for CPUs the partition lacks. ``server_node``: the first node holds the server alone.
        None where it cannot be known (no sinfo) or oversubscription was asked (--overcommit)."""
        if self.options.get("overcommit") or self.additional.get("overcommit"):
            return None
        per_node = self.ntasks_per_node
        if per_node is None:
            found = commands.cpus_per_node(self.partition)
            if found is None:
                return None
            per_node = max(1, found[1] // self.cpus_per_rank())
        nodes = node_range(self.nodes)[0] - int(server_node)
        return nodes * per_node - (others - int(server_node))

    def check_partition(self, commands: Any, ranks: int) -> None:
        """check_capacity against the partition as ``commands.cpus_per_node`` (sinfo) reports it; skipped
        where Slurm cannot be asked."""
        found = commands.cpus_per_node(self.partition)
        if found is not None:
            self.check_capacity(ranks, found[1], found[0])

    def check_capacity(self, ranks: int, cpus_per_node: int | None, partition: str) -> None:
        """Explain, before submitting, an allocation whose ranks cannot fit the partition's nodes (the job
        would sit PENDING forever): ranks/node x cpus-per-task against the nodes' CPUs (from sinfo)."""
        if not cpus_per_node or self.options.get("overcommit"):
            return
        per_node = self.per_node(ranks)
        need = per_node * self.cpus_per_rank()
        if need > cpus_per_node:
            fit = max(1, cpus_per_node // self.cpus_per_rank())
            nodes = -(-ranks // fit)
            raise ConfigError(
                f"{ranks} ranks on {node_range(self.nodes)[0]} node(s) = {per_node} per node x {self.cpus_per_rank()} CPU(s) each = "
                f"{need} CPUs per node; partition {partition} has {cpus_per_node} CPUs per node: use --nodes {nodes} "
                f"(at most {fit} ranks per node), fewer clients per allocation, or --overcommit"
            )
