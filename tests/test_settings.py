"""Settings profiles: every shipped profile loads; bad keys and inconsistent deadlines are refused by name."""

import pytest

from hpcflare.errors import ConfigError
from hpcflare.settings import CONFIGS_DIR, Settings


@pytest.mark.parametrize("profile", sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
def test_shipped_profiles_load_and_validate(profile):
    Settings.load(profile).validate()


def test_three_profiles_exist():
    assert {p.stem for p in CONFIGS_DIR.glob("*.yaml")} >= {"dev", "production", "hpc-large"}


def test_every_setting_is_documented():
    docs = Settings.field_docs()
    assert set(docs) == set(Settings().as_dict()) and all(docs.values())


def test_unknown_key_and_bad_values():
    with pytest.raises(ConfigError, match=r"unknown settings key\(s\) \['round_timout'\]"):
        Settings.load("dev", {"round_timout": 5})
    with pytest.raises(ConfigError, match="must be a number"):
        Settings.load("dev", {"round_timeout": "soon"})
    with pytest.raises(ConfigError, match="must be > 0"):
        Settings.load("dev", {"round_timeout": 0})
    with pytest.raises(ConfigError, match="not found"):
        Settings.load("no-such-profile")
    with pytest.raises(ConfigError, match="shared_memory must be true or false"):
        Settings.load("dev", {"shared_memory": "yes"})
    with pytest.raises(ConfigError, match="shared_memory must be true or false"):
        Settings.load("dev", {"shared_memory": 1})
    assert Settings.load("dev", {"shared_memory": False}).shared_memory is False
    with pytest.raises(ConfigError, match="must be a number"):  # and a switch is no number either
        Settings.load("dev", {"round_timeout": True})


def test_inconsistent_settings_name_both_keys():
    with pytest.raises(
        ConfigError, match=r"heartbeat_timeout \(2.0\) must be > 2 x heartbeat_interval \(5.0\)"
    ):
        Settings.load("dev", {"heartbeat_timeout": 2, "heartbeat_interval": 5})
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        Settings.load("dev", {"chunk_size": 1 << 22})


def test_a_profile_too_small_for_the_client_count_is_named():
    dev = Settings.load("dev")
    assert dev.fit_warnings(8, 8) == []
    problems = dev.fit_warnings(10_000, 10_000)
    assert any("registration_timeout" in p and "10000 clients" in p for p in problems)
    assert any("heartbeat_interval" in p and "clients_per_rank" in p for p in problems)
    assert Settings.load("hpc-large").fit_warnings(10_000, 16) == []  # 16 client ranks x 625 virtual clients


def test_stream_deadlines_grow_with_the_model_and_round_timeout_is_checked_against_it():
    s = Settings.load("dev")  # stream_timeout 120 s, round_timeout 120 s, min_link_mb_s 50
    assert s.stream_deadline(10 << 20) == s.stream_timeout  # a small model keeps the plain deadline
    assert s.stream_deadline(int(70e9)) == pytest.approx(70e9 / 50e6)  # 70 GB at 50 MB/s: 1400 s, not 120 s
    assert s.fit_warnings(2, 2, int(2e9)) == []  # 2 GB down and up at 50 MB/s = 80 s < 120 s
    [problem] = s.fit_warnings(2, 2, int(4e9))
    assert "round_timeout (120s)" in problem and "min_link_mb_s=50" in problem


def test_upload_deadline_counts_the_bytes_it_can_see():
    import numpy as np

    from hpcflare.transport.grpc_client import _size_of

    params = {"a": np.zeros(1000, np.float32), "b": np.zeros(10, np.float64)}
    assert _size_of(params.items()) == 4080 and _size_of(list(params.items())) == 4080
    assert _size_of(iter(params.items())) == 0  # a one-shot iterator is not consumed to measure it


def test_every_setting_has_an_upper_bound_and_a_larger_value_is_refused():
    import dataclasses

    from hpcflare.settings import MAX_DEADLINE_S, MAXIMA, upper_bound

    for field in dataclasses.fields(Settings):
        if field.type in ("bool", bool):
            continue
        if field.type in ("int", int):
            assert field.name in MAXIMA, f"settings.{field.name}: a count or size needs its bound in MAXIMA"
        assert getattr(Settings(), field.name) <= upper_bound(field.name)
    with pytest.raises(ConfigError, match=r"settings.round_timeout must be at most 2.592e\+06, got 1e\+300"):
        Settings().replace(round_timeout=1e300)
    with pytest.raises(ConfigError, match="settings.server_threads must be at most 4096"):
        Settings().replace(server_threads=10**9)
    assert Settings().replace(round_timeout=MAX_DEADLINE_S).round_timeout == MAX_DEADLINE_S


def test_an_absurd_round_count_is_refused(tmp_path):
    import numpy as np

    from hpcflare.recipe import FedAvgRecipe

    with pytest.raises(ConfigError, match="num_rounds must be at most 1,000,000, got 1e"):
        FedAvgRecipe(
            name="x", model={"w": np.zeros(2)}, min_clients=1, num_rounds=1e18, train_script=__file__
        )


def test_max_requeues_may_be_zero_and_nothing_else_may():
    assert Settings.from_mapping({"max_requeues": 0}).max_requeues == 0  # never requeue at the time limit
    with pytest.raises(ConfigError, match="max_requeues must be >= 0"):
        Settings.from_mapping({"max_requeues": -1})
    with pytest.raises(ConfigError, match="round_timeout must be > 0"):
        Settings.from_mapping({"round_timeout": 0})
