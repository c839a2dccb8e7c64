"""Run an NVFlare job.py as ``python job.py`` would, with NVFlare's job-side and client-side names served."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from hpcflare.client import nvflare_compat
from hpcflare.errors import HpcflareError
from hpcflare.exitcodes import exit_for
from hpcflare.nvflare.envs import STARTED
from hpcflare.nvflare.names import JOB_MODULES

USAGE = "usage: hpcflare nvflare JOB.py [ARGS...]   (python -m hpcflare.nvflare JOB.py [ARGS...])"


def missing_name(exc: ImportError) -> str:
    """What an NVFlare import that hpcflare does not serve lacks, and what it does serve there."""
    if isinstance(exc, ModuleNotFoundError):
        return str(exc)
    module = sys.modules.get(exc.name or "")
    provided = sorted(getattr(module, "__all__", None) or []) if module is not None else []
    where = f"; {exc.name} provides {provided}" if provided else ""
    return f"{exc}{where} (docs: 'Coming from NVFlare')"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    path = Path(args[0])
    if path.suffix != ".py" or not path.is_file():
        print(f"[hpcflare] {path}: not a Python file\n{USAGE}", file=sys.stderr)
        return 2
    nvflare_compat.install_job_side(JOB_MODULES)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args[1:]]
    sys.path.insert(0, str(path.resolve().parent))  # `from model import Net`, as with `python job.py`
    try:
        runpy.run_path(str(path), run_name="__main__")
        for run in list(STARTED):  # a job the script started but did not wait for runs to its end
            if not run.done:
                run.get_result()
        for run in STARTED:  # the exit status says how the jobs ended (python job.py would say 0)
            status = run.hpcflare_run.get_status()
            if status.get("state") != "completed":
                code = status.get("exit_code")
                return int(code) if isinstance(code, int) and 0 < code < 256 else 1
    except ImportError as exc:
        if not (exc.name or "").startswith("nvflare"):
            raise
        print(f"[hpcflare] {path}: {missing_name(exc)}", file=sys.stderr)
        return 2
    except HpcflareError as exc:
        code, reason = exit_for(exc)
        print(f"[hpcflare] {path}: {reason}", file=sys.stderr)
        return int(code)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0
