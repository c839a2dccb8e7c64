"""One Slurm request spec for both routes (sbatch template and submitit): time limits and options."""

from __future__ import annotations

import pytest

from hpcflare.errors import ConfigError
from hpcflare.slurm.spec import Allocation, time_minutes


@pytest.mark.parametrize(
    "value, minutes",
    [
        ("30", 30),
        (45, 45),
        ("01:30:00", 90),
        ("10:30", 11),
        ("1-00:00:00", 1440),
        ("2-3", 2 * 1440 + 180),
        ("0:00:01", 1),
    ],
)
def test_time_limits_in_every_slurm_form(value, minutes):
    assert time_minutes(value) == minutes


@pytest.mark.parametrize("value", ["1h", "", "01:60:00:00", 0, "-5"])
def test_bad_time_limits_are_refused(value):
    with pytest.raises(ConfigError):
        time_minutes(value)


def test_both_routes_get_the_same_request():
    alloc = Allocation(
        nodes=2, partition="debug", time="01:00:00", additional={"account": "proj1", "exclusive": True}
    )
    assert alloc.directives() == [
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj1",
        "#SBATCH --exclusive",
    ]
    assert alloc.submitit_parameters(ranks=5) == {
        "nodes": 2,
        "ntasks_per_node": 3,
        "time": 60,
        "partition": "debug",
        "additional_parameters": {"account": "proj1", "exclusive": True},
    }
