"""hpcflare installs like a library: a built wheel (not an editable checkout) brings its settings profiles,
sbatch template and launcher, never touches a torch that is already installed, and runs a real job."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

FAKE_TORCH = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"
[project]
name = "torch"
version = "2.1.0"
[tool.setuptools]
packages = ["torch"]
"""


def _run(*argv: str, cwd: Path, timeout: int = 900) -> str:
    """Run in the fresh venv's world: nothing of the outer environment's Python path leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(argv)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.timeout(1200)
def test_wheel_installs_next_to_another_torch_and_runs_a_job(tmp_path):
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO), cwd=tmp_path)
    fake = tmp_path / "faketorch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("__version__ = '2.1.0'\n")
    (fake / "pyproject.toml").write_text(textwrap.dedent(FAKE_TORCH))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    _run(python, "-m", "pip", "install", "-q", str(fake), cwd=tmp_path)  # "the cluster's torch"
    wheel = next(wheels.glob("hpcflare-*.whl"))
    installed = _run(python, "-m", "pip", "install", f"{wheel}[torch]", cwd=tmp_path)
    assert (venv / "bin" / "hpcflare").exists(), installed[-3000:]
    assert "torch 2.1.0" in _run(python, "-m", "pip", "list", "--format=freeze", cwd=tmp_path).replace(
        "==", " "
    )
    assert _run(str(venv / "bin" / "hpcflare"), "--version", cwd=tmp_path).startswith("hpcflare ")
    settings = _run(str(venv / "bin" / "hpcflare"), "settings", cwd=tmp_path)
    assert "round_timeout" in settings and str(REPO) not in settings  # the wheel's own copy of configs/
    located = _run(
        python,
        "-c",
        "import hpcflare.slurm.sbatch as s; print(s.TEMPLATE.is_file(), s.LAUNCHER.is_file(),"
        " os.access(s.LAUNCHER, os.X_OK), s.TEMPLATE)".replace("print(", "import os; print("),
        cwd=tmp_path,
    )
    assert located.startswith("True True True") and str(venv) in located
    out = _run(python, str(REPO / "recipes" / "hello-numpy" / "job.py"), cwd=tmp_path, timeout=300)
    assert "completed" in out and "[10. 11. 12.]" in out


@pytest.mark.timeout(1200)
def test_the_core_install_alone_runs_the_quick_start_job(tmp_path):
    """README command 1: the core package, no extra (no torch, no test tools), runs hello-numpy with
    `hpcflare run`."""
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO), cwd=tmp_path)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    _run(python, "-m", "pip", "install", "-q", str(next(wheels.glob("hpcflare-*.whl"))), cwd=tmp_path)
    missing = _run(
        python,
        "-c",
        "import importlib.util as u; print([m for m in ('torch', 'pytest') if u.find_spec(m)])",
        cwd=tmp_path,
    )
    assert missing.strip() == "[]"  # nothing optional came along
    out = _run(
        str(venv / "bin" / "hpcflare"),
        "run",
        str(REPO / "recipes" / "hello-numpy"),
        cwd=tmp_path,
        timeout=300,
    )
    assert "completed" in out and "[10. 11. 12.]" in out
