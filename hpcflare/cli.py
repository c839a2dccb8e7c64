"""``hpcflare`` command line: run recipes, inspect jobs and settings."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hpcflare import __version__
from hpcflare.exitcodes import HELP, ExitCode, describe, explain_failure
from hpcflare.fileio import atomic_write_text
from hpcflare.job import JobDir
from hpcflare.settings import CONFIGS_DIR, Settings
from hpcflare.slurm.commands import FINAL_STATES as SLURM_FINAL_STATES
from hpcflare.slurm.commands import settle_ended
from hpcflare.slurm.spec import NAMED


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    target = Path(args.recipe)
    job_py = target / "job.py" if target.is_dir() else target
    if not job_py.is_file():
        print(
            f"hpcflare run: no job.py in {target}; pass a recipe folder such as recipes/hello-numpy",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(job_py), *extra])


def _nvflare(args: argparse.Namespace, extra: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "hpcflare.nvflare", args.job_py, *args.job_args, *extra])


def _status(args: argparse.Namespace, extra: list[str]) -> int:
    job_dir = JobDir(args.job_dir)
    if not job_dir.config_path.is_file():
        print(f"hpcflare status: {job_dir.root} is not a job directory (no job.yaml)", file=sys.stderr)
        return 2
    print(json.dumps(job_dir.read_status(), indent=2))
    return 0


def _settings(args: argparse.Namespace, extra: list[str]) -> int:
    settings = Settings.load(args.profile)
    docs = Settings.field_docs()
    print(f"profile {args.profile} ({CONFIGS_DIR})")
    for key, value in settings.as_dict().items():
        print(f"  {key:<24} {value!s:<14} {docs.get(key, '')}")
    return 0


def _exit_codes(args: argparse.Namespace, extra: list[str]) -> int:
    if args.code is not None and not -255 <= args.code <= 255:
        print(
            f"hpcflare exit-codes: {args.code} is not a process exit status (0-255, or -N for signal N)",
            file=sys.stderr,
        )
        return 2
    if args.code is not None:
        # a code read off sacct or a shell ($? or 128+signal) may not be hpcflare's own: explain it anyway
        print(f"{args.code:>4}  {describe(args.code)}")
        return 0
    for code in ExitCode:
        print(f"{int(code):>4}  {code.name:<22} {HELP[code]}")
    return 0


def _per_rank(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'auto', got {text!r}")
    return int(text)


def _job(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcflare.errors import HpcflareError
    from hpcflare.slurm import SlurmCommands
    from hpcflare.slurm.commands import explain_reason

    slurm = SlurmCommands()
    try:
        if args.action == "submit":
            job_dir = JobDir(args.target)
            job_dir.load_config()
            if args.dry_run:  # what the dry run settles (clients_per_rank) must not stay in job.yaml
                before = job_dir.config_path.read_text()
                try:
                    return _submit(args, job_dir, slurm)
                finally:
                    if job_dir.config_path.read_text() != before:
                        atomic_write_text(job_dir.config_path, before)
            return _submit(args, job_dir, slurm)
        elif args.action in ("run", "resume"):
            from hpcflare.env import make_env

            job_dir = JobDir(args.target)
            job_dir.load_config()
            slurm_time = {"time": args.time} if args.env == "slurm" else {}
            env = make_env(
                args.env,
                job_root=str(job_dir.root.parent),
                nodes=args.nodes,
                partition=args.partition,
                **slurm_time,
            )
            if args.action == "run":
                run = env.deploy(job_dir)
                print(f"running {job_dir.root.name} ({args.env}); logs {job_dir.log_dir}", flush=True)
            else:
                run = env.resume(job_dir)
                print(
                    f"resuming {job_dir.root.name} ({args.env}) from its last checkpoint; logs {job_dir.log_dir}",
                    flush=True,
                )
            if args.env == "slurm":
                print(f"Slurm job {getattr(run, 'slurm_job_id', '?')}: `hpcflare job status {job_dir.root}`")
            else:
                print(f"result model: {run.get_result()}")
        elif args.action == "status":
            job_id, job_dir = _resolve(args.target)
            if args.follow and job_dir is not None:
                _follow(job_dir, job_id, slurm)
            state = slurm.state(job_id)
            info = {"slurm_job_id": job_id, "slurm_state": state}
            reason = slurm.pending_reason(job_id)
            if reason:
                info["pending_reason"] = reason
            if job_dir is not None:
                # scancel'd or lost before any rank recorded an end (a preempted job is requeued)
                if state in SLURM_FINAL_STATES - {"PREEMPTED"}:
                    settle_ended(job_dir, job_id, state)
                info.update(job_dir.read_status())
            print(json.dumps(info, indent=2))
        elif args.action == "abort":
            job_id, job_dir = _resolve(args.target)
            linked = job_dir.root / "slurm_clients_job_id" if job_dir is not None else None
            for each in [job_id] + (
                [linked.read_text().strip()] if linked is not None and linked.is_file() else []
            ):
                slurm.cancel(each)  # --separate: the clients allocation goes with the server's
                print(f"cancelled Slurm job {each}")
        elif args.action == "list":
            jobs = slurm.list_jobs()
            print(f"{'JOBID':>8} {'STATE':<11} {'TIME':>9} {'NODES':>5}  NAME (REASON)")
            for job in jobs:
                code = job["reason"].strip("()")
                why = job["reason"] if job["state"] != "PENDING" else f"{code}: {explain_reason(code)}"
                print(
                    f"{job['job_id']:>8} {job['state']:<11} {job['time']:>9} {job['nodes']:>5}  {job['name']} ({why})"
                )
    except HpcflareError as exc:
        print(f"hpcflare job {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _submit(args: argparse.Namespace, job_dir: JobDir, slurm: Any) -> int:
    """`hpcflare job submit`: settle clients_per_rank against the allocation, then render and submit."""
    from hpcflare.errors import ConfigError
    from hpcflare.runtime.client_rank import settle_clients_per_rank
    from hpcflare.slurm.sbatch import SbatchSpec, render_sbatch, write_sbatch

    options = {k: getattr(args, k) for k in NAMED}
    common = dict(
        ntasks_per_node=args.ntasks_per_node,
        partition=args.partition,
        time=args.time,
        options=options,
        sbatch_args=tuple(args.sbatch_arg or ()),
    )
    # 'auto' (the default): a rank per site while they fit the partition's CPUs, else sites packed into ranks;
    # written to job.yaml, where every rank reads it
    fitting = SbatchSpec(
        job_dir,
        nodes=args.nodes,
        part="clients" if args.separate else "all",
        server_exclusive=args.server_exclusive and not args.separate,
        **common,
    )
    settle_clients_per_rank(job_dir, args.clients_per_rank, lambda config: fitting.client_slots(slurm))
    spec = SbatchSpec(
        job_dir,
        nodes=args.nodes,
        rendezvous=args.rendezvous,
        server_exclusive=args.server_exclusive,
        **common,
    )
    if not args.separate:
        spec.check_capacity(
            slurm
        )  # before anything sits PENDING for ever (skipped without sinfo), or is written
    if not args.dry_run:
        from hpcflare.security.jobs import prepare_job

        job_dir.check_deployable()
        prepare_job(job_dir, secure_default=True)  # mutual TLS by default on Slurm
    if args.separate:  # server and clients as two allocations, meeting in the job dir
        if args.server_exclusive:
            raise ConfigError(
                "--separate already gives the server an allocation of its own; drop "
                "--server-exclusive (or --separate for one allocation)"
            )
        server = SbatchSpec(job_dir, nodes=1, part="server", **common | {"ntasks_per_node": 1})
        if args.dry_run:
            print(render_sbatch(server))
            print(render_sbatch(_clients_spec(job_dir, args.nodes, "<SERVER_JOB_ID>", common)))
            return 0
        server_id = slurm.submit(write_sbatch(server))
        clients_id = slurm.submit(write_sbatch(_clients_spec(job_dir, args.nodes, server_id, common)))
        atomic_write_text(job_dir.root / "slurm_job_id", server_id + "\n")
        atomic_write_text(job_dir.root / "slurm_clients_job_id", clients_id + "\n")
        print(
            f"submitted {job_dir.root.name}: server as Slurm job {server_id}, clients as {clients_id}; "
            f"logs {job_dir.log_dir}"
        )
        return 0
    text = render_sbatch(spec)
    if args.dry_run:
        print(text)
        return 0
    path = write_sbatch(spec)
    job_id = slurm.submit(path)
    atomic_write_text(job_dir.root / "slurm_job_id", job_id + "\n")
    print(f"submitted {job_dir.root.name} as Slurm job {job_id}; script {path}; logs {job_dir.log_dir}")
    return 0


def _clients_spec(job_dir: JobDir, nodes: int | str, server_id: str, common: dict[str, Any]) -> Any:
    """The clients allocation of a --separate job: it starts only once the server's has started, and Slurm
    cancels it if the server's job ends without starting (held, failed, cancelled)."""
    from hpcflare.slurm.sbatch import SbatchSpec

    link = (f"--dependency=after:{server_id}", "--kill-on-invalid-dep=yes")
    return SbatchSpec(
        job_dir,
        nodes=nodes,
        part="clients",
        server_job_id=server_id,
        **{**common, "sbatch_args": tuple(common.get("sbatch_args", ())) + link},
    )


def _follow(job_dir: JobDir, job_id: str, slurm: Any) -> None:
    """Show the job's rounds with an ETA until it ends (its status is final or Slurm says it is over)."""
    from hpcflare.env.progress import RoundProgress
    from hpcflare.job import FINAL_STATES as JOB_FINAL

    try:
        with RoundProgress(job_dir, enabled=True) as progress:
            while (
                job_dir.read_status().get("state") not in JOB_FINAL
                and slurm.state(job_id) not in SLURM_FINAL_STATES
            ):
                progress.update()
                time.sleep(1.0)
    except KeyboardInterrupt:  # the user stops watching; the job itself goes on
        print(f"\nstopped following job {job_id}; it goes on (`hpcflare job status {job_dir.root}` shows it)")


def _nodes(value: str) -> int | str:
    return int(value) if value.isdigit() else value  # "2-4" is checked with the rest of the request


def _resolve(target: str | None) -> tuple[str, JobDir | None]:
    """A Slurm job id, or a job directory that was submitted with `hpcflare job submit`."""
    from hpcflare.errors import ConfigError

    if target and target.isdigit():
        return target, None
    job_dir = JobDir(target or ".")
    id_file = job_dir.root / "slurm_job_id"
    if not id_file.is_file():
        raise ConfigError(
            f"{target} is neither a Slurm job id nor a job directory submitted with `hpcflare job submit`"
        )
    return id_file.read_text().strip(), job_dir


def _logs(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcflare.errors import ConfigError
    from hpcflare.logs.diagnose import report

    try:
        if args.action == "timeline":
            from hpcflare.logs.timeline import draw

            print(f"timeline written to {draw(JobDir(args.job_dir), args.output or 'timeline.png')}")
        elif args.action == "plot":
            from hpcflare.logs.plot import draw as plot

            print(f"metrics plot written to {plot(JobDir(args.job_dir), args.output or 'metrics.png')}")
        else:
            print(report(JobDir(args.job_dir)))
    except ConfigError as exc:
        print(f"hpcflare logs {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


def _dashboard(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    from hpcflare.errors import ConfigError

    root = Path(args.job_root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: point the dashboard at a job folder or a job root")
    try:
        from hpcflare.dashboard.app import new_token, serve
        from hpcflare.dashboard.data import find_jobs
    except ImportError as exc:
        raise ConfigError(f"the dashboard needs {exc.name}: pip install 'hpcflare[dashboard]'") from None
    if not 0 < args.port < 65536 or not 0.2 <= args.refresh <= 3600:
        raise ConfigError("--port must be 1-65535 and --refresh 0.2-3600 seconds")
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in args.bind else socket.AF_INET) as probe:
            probe.bind((args.bind, args.port))
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.bind}:{args.port} ({exc.strerror or exc}): choose another --port"
        ) from None
    token = os.environ.get("HPCFLARE_DASHBOARD_TOKEN") or new_token()
    jobs = find_jobs(root)
    print(
        f"hpcflare dashboard: {len(jobs)} job(s) under {root.resolve()}"
        + ("" if jobs else " (none yet: it shows them as they appear)")
    )
    host = "127.0.0.1" if args.bind in ("0.0.0.0", "::", "") else args.bind
    print(f"open http://{host}:{args.port}/?token={token}", flush=True)
    if args.bind == "127.0.0.1":
        print(
            f"from your machine: ssh -L {args.port}:127.0.0.1:{args.port} THIS_LOGIN_NODE, then open that URL"
        )
    serve(root, args.bind, args.port, token, args.refresh)
    return 0


def _provision(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcflare.errors import HpcflareError
    from hpcflare.security.provision import Participant, Project, add_participant, provision

    try:
        if args.add:
            scripts = args.allowed_script or None
            kit = add_participant(
                args.project,
                Participant(
                    args.add, args.role, args.host or [], scripts, org=args.org, admin_role=args.admin_role
                ),
                base=Path.cwd(),
            )
            print(f"issued {args.role} kit {kit} (key 0600); hand it to {args.add} over a secure channel")
            return 0
        project = Project.load(args.project)
        root = provision(project, args.output, base=Path(args.project).resolve().parent)
    except HpcflareError as exc:
        print(f"hpcflare provision: {exc}", file=sys.stderr)
        return 2
    print(f"provisioned {project.project} in {root}: CA in {root / 'ca'} (keep rootCA.key private), kits:")
    for who in project.participants:
        print(f"  {who.role:<7} {root / who.name}")
    print(
        "Each participant gets only its own kit folder; point job.yaml kits_dir at the folder holding the kits, "
        "or set HPCFLARE_KIT=/path/to/kit on a site."
    )
    return 0


def _flower(args: argparse.Namespace, extra: list[str]) -> int:
    """`hpcflare flower run APP_DIR`: the app on Flower's engine, in the Env named."""
    from hpcflare.env import make_env
    from hpcflare.recipe import FlowerRecipe

    run_config = {}
    for item in args.run_config or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"hpcflare flower run: --run-config takes KEY=VALUE, not {item!r}")
        run_config[key] = _typed(value)
    recipe = FlowerRecipe(
        args.app_dir,
        n_clients=args.n_clients,
        num_rounds=args.rounds,
        run_config=run_config,
        clients_per_rank=args.clients_per_rank or 1,
    )
    if args.export_only:
        print(recipe.export(args.job_root).root)
        return 0
    slurm = {"time": args.time} if args.env == "slurm" else {}
    env = make_env(args.env, args.job_root, args.nodes, args.partition, args.clients_per_rank, **slurm)
    run = recipe.execute(env)
    print(f"the Flower run's output: {run.get_result()}")
    return 0


def _typed(value: str) -> Any:
    """A --run-config value as TOML would read it: an int, a float, true/false, else the string."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def _add_flower_commands(sub: Any) -> None:
    flower = sub.add_parser(
        "flower", help="run an unmodified Flower app with Flower's engine on hpcflare's ranks"
    )
    actions = flower.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "run",
        help="run a Flower app (a folder with a pyproject.toml, as `flwr new` makes it)",
        description="The server rank runs Flower's SuperLink and submits the app (flwr run); each site runs a "
        "Flower SuperNode with node config partition-id and num-partitions. Flower aggregates: hpcflare's relays "
        "and strategies are not involved. Needs pip install 'hpcflare[flower]'.",
    )
    p.add_argument("app_dir", metavar="APP_DIR")
    p.add_argument("--env", choices=("local", "sim", "mpi", "slurm"), default="local")
    p.add_argument("--n-clients", type=int, default=2, help="SuperNodes (sites)")
    p.add_argument(
        "--rounds", type=int, default=None, help="the app's num-server-rounds (default: the app's)"
    )
    p.add_argument(
        "--run-config", action="append", metavar="KEY=VALUE", help="a run config override (repeatable)"
    )
    p.add_argument("--clients-per-rank", type=_per_rank, default=None, help="SuperNodes per client rank")
    p.add_argument("--job-root", default="jobs")
    p.add_argument("--export-only", action="store_true", help="write the job directory, run nothing")
    p.add_argument("--nodes", type=int, default=2, help="--env slurm")
    p.add_argument("--partition", default=None, help="--env slurm")
    p.add_argument("--time", default="00:30:00", help="--env slurm: the time limit")
    flower.set_defaults(func=_flower)


def _add_job_commands(sub: Any) -> None:
    """`hpcflare job submit|run|resume|status|abort|list`: each action with its own flags and help."""
    job = sub.add_parser("job", help="submit, run, resume, inspect or abort a job directory")
    actions = job.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--env", choices=("local", "sim", "mpi", "slurm"), default="local")
    where.add_argument("--nodes", type=_nodes, default=1, help="--env slurm: a count")
    where.add_argument("--partition", default=None, help="--env slurm")
    where.add_argument("--time", default="00:30:00", help="--env slurm: the time limit")
    p = actions.add_parser("submit", help="submit a job directory to Slurm as a batch job (sbatch)")
    p.add_argument("target", metavar="JOB_DIR")
    p.add_argument("--nodes", type=_nodes, default=1, help="a count, or a range like 2-4")
    p.add_argument("--ntasks-per-node", type=int, default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default="00:30:00")
    p.add_argument("--rendezvous", choices=("fs", "mpi"), default="fs")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, do not submit")
    for name in NAMED:  # the common sbatch options by name
        flag = "--" + name.replace("_", "-")
        if name in ("exclusive", "overcommit"):
            p.add_argument(flag, action="store_true", help=f"sbatch {flag}")
        else:
            p.add_argument(
                flag, type=int if name == "cpus_per_task" else str, default=None, help=f"sbatch {flag}"
            )
    p.add_argument(
        "--sbatch-arg",
        action="append",
        metavar="--OPTION=VALUE",
        help="any other sbatch option, as sbatch takes it (repeatable), e.g. --sbatch-arg=--licenses=fs:1",
    )
    p.add_argument(
        "--separate",
        action="store_true",
        help="submit the server and the clients as two allocations (sites as different jobs)",
    )
    p.add_argument(
        "--server-exclusive",
        action="store_true",
        help="one allocation, the server alone on its first node (relays and clients on the others)",
    )
    p.add_argument(
        "--clients-per-rank",
        type=_per_rank,
        default=None,
        help="sites each client rank runs as virtual clients (written to job.yaml; default: the job's)",
    )
    p = actions.add_parser(
        "run", parents=[where], help="run an exported job directory (recipe --export-only) in an Env"
    )
    p.add_argument("target", metavar="JOB_DIR")
    p = actions.add_parser(
        "resume", parents=[where], help="continue a job directory from its last checkpoint in an Env"
    )
    p.add_argument("target", metavar="JOB_DIR")
    p = actions.add_parser("status", help="a job's state: its status.json and Slurm's view")
    p.add_argument("target", metavar="JOB", help="a job directory or a Slurm job id")
    p.add_argument("--follow", action="store_true", help="show per-round progress until the job ends")
    p = actions.add_parser("abort", help="cancel a job's Slurm allocation(s)")
    p.add_argument("target", metavar="JOB", help="a job directory or a Slurm job id")
    actions.add_parser("list", help="your Slurm jobs, with why pending ones wait")
    job.set_defaults(func=_job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hpcflare", description="Federated learning runtime for HPC clusters."
    )
    parser.add_argument("--version", action="version", version=f"hpcflare {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks of expected failures too"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "run",
        help="run a recipe folder's job.py (extra args are passed through)",
        description="Run RECIPE/job.py. Every argument after RECIPE is passed through to it unchanged, e.g. "
        "`hpcflare run recipes/hello-numpy --env sim --rounds 5` (see `python RECIPE/job.py --help`). "
        "To run an exported job directory, use `hpcflare job run JOB_DIR`.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="a folder with a job.py (or the job.py itself)")
    p.set_defaults(func=_run)
    p = sub.add_parser(
        "nvflare",
        help="run an NVFlare job.py unchanged (its NVFlare imports served by hpcflare)",
        description="Run an NVFlare job.py as `python JOB.py ARGS` would, with the job-side NVFlare names "
        "(recipes, SimEnv/PocEnv/ProdEnv, add_experiment_tracking, FedJob/ScriptRunner) and the client-side "
        "ones served by hpcflare. Every argument after JOB.py is passed through to it.",
    )
    p.add_argument("job_py", metavar="JOB.py", help="the NVFlare job script")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_nvflare)
    p = sub.add_parser("status", help="print a job directory's status.json")
    p.add_argument("job_dir")
    p.set_defaults(func=_status)
    p = sub.add_parser("settings", help="show a settings profile with every deadline documented")
    p.add_argument("--profile", default="dev")
    p.set_defaults(func=_settings)
    p = sub.add_parser("exit-codes", help="list every rank exit code with its help text, or explain one")
    p.add_argument("code", nargs="?", type=int, help="explain this exit code (also signals: 137, 142, -9)")
    p.set_defaults(func=_exit_codes)
    p = sub.add_parser("logs", help="troubleshoot a job from its logs")
    p.add_argument(
        "action",
        choices=("diagnose", "timeline", "plot"),
        help="diagnose: explain what went wrong; timeline: draw per-rank activity (PNG); plot: each training "
        "metric by round, a line per site and the global one (PNG)",
    )
    p.add_argument("job_dir")
    p.add_argument("-o", "--output", help="timeline/plot: the image to write (timeline.png, metrics.png)")
    p.set_defaults(func=_logs)
    p = sub.add_parser("diagnose", help="short for `hpcflare logs diagnose JOB_DIR`")
    p.add_argument("job_dir")
    p.set_defaults(func=_logs, action="diagnose", output=None)
    p = sub.add_parser(
        "dashboard",
        help="serve a live, read-only web page over job folders (needs hpcflare[dashboard])",
        description="Serves the jobs under JOB_ROOT (a job folder, a LocalEnv/SlurmEnv job_root, or a standing "
        "server's store) at http://BIND:PORT. Every request needs the dashboard's token: "
        "$HPCFLARE_DASHBOARD_TOKEN, else a new one, printed in the URL to open.",
    )
    p.add_argument("job_root", nargs="?", default=".", help="folder to look for jobs in (default: here)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    p.add_argument(
        "--bind", default="127.0.0.1", help="interface (default 127.0.0.1: reach it through an SSH tunnel)"
    )
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between the page's updates")
    p.set_defaults(func=_dashboard)
    p = sub.add_parser("provision", help="create a project CA and per-participant startup kits (mutual TLS)")
    p.add_argument("project", help="project.yaml; with --add: the provisioned folder (OUT/<project>)")
    p.add_argument("-o", "--output", default="workspace", help="where OUT/<project>/ is created")
    p.add_argument("--add", metavar="NAME", help="issue one more kit from an existing CA")
    p.add_argument("--role", choices=("client", "relay", "server", "admin"), default="client")
    p.add_argument(
        "--admin-role",
        choices=("project_admin", "org_admin", "lead", "member"),
        help="--add --role admin: what the admin may do on a standing server",
    )
    p.add_argument("--org", help="--add: the participant's institution (default: its name)")
    p.add_argument("--host", action="append", help="--add: extra DNS name/IP for the certificate")
    p.add_argument("--allowed-script", action="append", help="--add: the only script(s) this site may run")
    p.set_defaults(func=_provision)
    _add_job_commands(sub)
    _add_flower_commands(sub)
    from hpcflare.federation.cli import add_commands

    add_commands(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "nvflare"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra))
    except (
        Exception,
        KeyboardInterrupt,
    ) as exc:  # an expected failure ends with one line, a bug with its traceback
        explained = None if args.verbose else explain_failure(exc)
        if explained is None:
            raise
        print(f"hpcflare {args.command}: {explained[1]}", file=sys.stderr)
        return explained[0]


if __name__ == "__main__":
    sys.exit(main())
