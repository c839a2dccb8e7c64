"""The hpcflare command line."""

import json
import subprocess
import sys
from pathlib import Path

from hpcflare.cli import main


def test_exit_codes_and_settings_listing(capsys):
    assert main(["exit-codes"]) == 0
    assert "ROUND_FAILED" in capsys.readouterr().out
    assert main(["exit-codes", "142"]) == 0
    assert "SIGALRM" in capsys.readouterr().out
    assert main(["exit-codes", "137"]) == 0
    assert "SIGKILL" in capsys.readouterr().out
    assert main(["settings", "--profile", "hpc-large"]) == 0
    out = capsys.readouterr().out
    assert "round_timeout" in out and "1800" in out and "A round closes" in out


def test_run_without_job_py_is_a_clear_error(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert "no job.py" in capsys.readouterr().err


def test_status_of_a_job_dir(make_recipe, tmp_path, capsys):
    job_dir = make_recipe("print('x')\n").export(tmp_path / "jobs", job_id="j1")
    assert main(["status", str(job_dir.root)]) == 0
    assert json.loads(capsys.readouterr().out) == {"state": "pending"}
    assert main(["status", str(tmp_path)]) == 2


def test_console_script_is_installed():
    proc = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "run" in proc.stdout


def test_expected_failures_end_with_one_line_not_a_traceback(tmp_path):
    root = Path(__file__).resolve().parents[1]
    settings = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "settings", "--profile", "nope"],
        capture_output=True,
        text=True,
    )
    assert settings.returncode == 10 and "Traceback" not in settings.stderr
    assert settings.stderr.startswith("hpcflare settings: settings profile 'nope' not found")
    verbose = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "-v", "settings", "--profile", "nope"],
        capture_output=True,
        text=True,
    )
    assert "Traceback" in verbose.stderr  # -v keeps it
    code = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "exit-codes", "999"], capture_output=True, text=True
    )
    assert code.returncode == 2 and "not a process exit status" in code.stderr
    recipe = subprocess.run(
        [
            sys.executable,
            str(root / "recipes" / "hello-numpy" / "job.py"),
            "--profile",
            "nope",
            "--job-root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert recipe.returncode != 0 and "Traceback" not in recipe.stderr
    assert recipe.stderr.strip().splitlines()[-1].startswith("error: settings profile 'nope' not found")


def test_a_missing_extra_is_named():
    from hpcflare.exitcodes import explain_failure

    missing = ModuleNotFoundError("No module named 'xgboost'", name="xgboost")
    assert explain_failure(missing) == (10, "xgboost is not installed: pip install 'hpcflare[tabular]'")
    assert explain_failure(ValueError("a bug")) is None  # its traceback helps
    assert explain_failure(KeyboardInterrupt())[0] == 130


def test_provision_is_all_or_nothing(tmp_path):
    project = tmp_path / "project.yaml"
    project.write_text(
        "project: p\nparticipants:\n  - {name: server, role: server}\n"
        "  - {name: site-1, role: client, allowed_scripts: [missing.py]}\n"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "provision", str(project), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "missing.py not found" in failed.stderr
    assert not (tmp_path / "out" / "p").exists() and not list((tmp_path / "out").glob(".*"))
    (tmp_path / "missing.py").write_text("print('train')\n")
    made = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "provision", str(project), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0 and (tmp_path / "out" / "p" / "site-1" / "kit.yaml").is_file()


def test_ctrl_c_while_following_a_job_ends_quietly(make_recipe, tmp_path, capsys):
    """Ctrl-C stops the watching, not the job: one line saying so, no traceback."""
    from hpcflare.cli import _follow

    job_dir = make_recipe("print(1)\n", n_clients=2).export(tmp_path / "jobs")

    class Interrupted:
        calls = 0

        def state(self, job_id):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt  # what the terminal sends on Ctrl-C
            return "RUNNING"

    _follow(job_dir, "4242", Interrupted())
    out = capsys.readouterr()
    assert "stopped following job 4242; it goes on" in out.out and "Traceback" not in out.err + out.out


def test_job_actions_have_their_own_flags_and_help():
    def helped(*argv: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "hpcflare.cli", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert all(a in helped("job") for a in ("submit", "run", "resume", "status", "abort", "list"))
    submit, status, run = helped("job", "submit"), helped("job", "status"), helped("job", "run")
    assert "--sbatch-arg" in submit and "--separate" in submit and "--env" not in submit
    assert "--follow" in status and "--sbatch-arg" not in status and "--nodes" not in status
    assert "--env" in run and "--sbatch-arg" not in run
    assert "passed through" in helped("run")
    wrong = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "job", "status", "1", "--sbatch-arg=--x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "unrecognized arguments" in wrong.stderr


def test_job_run_runs_an_exported_job_directory(make_recipe, tmp_path, capsys):
    import numpy as np

    from tests.conftest import HELLO_MODEL, SLOW, load_result

    job_dir = make_recipe(SLOW, n_clients=2, num_rounds=2, train_args="0").export(tmp_path / "jobs")
    assert main(["job", "run", str(job_dir.root), "--env", "local"]) == 0
    out = capsys.readouterr().out
    assert f"running {job_dir.root.name} (local)" in out and "result model:" in out
    assert job_dir.read_status()["state"] == "completed"
    np.testing.assert_array_equal(load_result(job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 2)
