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
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, parts[0], parts[-1]), 3: tuple(parts)}[len(parts)]
    return days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


@dataclasses.dataclass
class Allocation:
    """Nodes, tasks, partition, time limit and any other sbatch option (by its long name, no dashes)."""

    nodes: int = 1
    ntasks_per_node: int | None = None  # default: spread the ranks evenly over the nodes
    partition: str | None = None
    time: str | int = "00:30:00"
    additional: dict[str, Any] = dataclasses.field(default_factory=dict)

    def per_node(self, ranks: int) -> int:
        if self.nodes < 1:
            raise ConfigError(f"nodes must be >= 1, got {self.nodes}")
        return self.ntasks_per_node or math.ceil(ranks / self.nodes)

    def minutes(self) -> int:
        return time_minutes(self.time)

    def directives(self) -> list[str]:
        """``#SBATCH`` lines for what the template does not spell out itself."""
        lines = [f"#SBATCH --partition={self.partition}"] if self.partition else []
        for key, value in self.additional.items():
            flag = key.replace("_", "-")
            lines.append(f"#SBATCH --{flag}" if value is True else f"#SBATCH --{flag}={value}")
        return lines

    def submitit_parameters(self, ranks: int) -> dict[str, Any]:
        """The same request as SlurmExecutor.update_parameters() keywords (public submitit API)."""
        params: dict[str, Any] = {"nodes": self.nodes, "ntasks_per_node": self.per_node(ranks),
                                  "time": self.minutes(), "additional_parameters": dict(self.additional)}
        if self.partition:
            params["partition"] = self.partition
        return params
