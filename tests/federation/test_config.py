"""server.yaml and site.yaml: typos and unsafe values are refused with the key named."""

from __future__ import annotations

import pytest

from hpcflare.errors import ConfigError
from hpcflare.federation.config import ServerConfig, SiteConfig


@pytest.mark.parametrize(
    "text, match",
    [
        ("prot: 8002\n", "unknown key"),
        ("port: 70000\n", "port must be"),
        ("job_ports: [9000, 8000]\n", "job_ports"),
        ("launcher: kubernetes\n", "launcher must be one of"),
        ("slurm: {account: 'a; rm -rf /'}\n", "plain word"),
        ("slurm: {extra: [mem=1G]}\n", "sbatch options"),
    ],
)
def test_server_yaml_refuses(tmp_path, text, match):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        ServerConfig.load(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("max_gpus: -1\n", "max_gpus"),
        ("partitions: gpu\n", "partitions must be a list"),
        ("send_logs: maybe\n", "send_logs"),
        ("settings: {site_join_timeout: 1e300}\n", "site_join_timeout"),
    ],
)
def test_site_yaml_refuses(tmp_path, text, match):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        SiteConfig.load(path)


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("launcher: slurm\nslurm: {partition: gpu, time_minutes: 60}\ndata_root: /data\n")
    config = SiteConfig.load(path, workspace=str(tmp_path / "w"))
    assert (config.launcher, config.slurm.partition, config.slurm.time_minutes) == ("slurm", "gpu", 60)
    assert str(config.workspace) == str(tmp_path / "w") and config.data_root == "/data"
    assert ServerConfig.load(None, port=9000).job_ports == (9001, 9097)
