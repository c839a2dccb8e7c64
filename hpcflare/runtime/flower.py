"""A Flower app on hpcflare's launcher (``FlowerRecipe``, ``hpcflare flower run``): Flower's own engine, hpcflare's
ranks. The server rank starts Flower's SuperLink, publishes its address through the job's rendezvous and submits
the app (``flwr run``); each client rank starts one Flower SuperNode per site it hosts, with node config
``partition-id`` (the site's index) and ``num-partitions`` (the job's site count). Flower aggregates; hpcflare's
relays and strategies are not involved. Every Flower process writes into the rank's logs; the job's status,
exit codes and ``logs diagnose`` work as for any job.

The app's directory is the job's ``app/`` (a ``pyproject.toml`` with ``[tool.flwr.app]``, as ``flwr new`` makes it).
Flower's own state lives in ``flower/`` in the job directory (``FLWR_HOME`` of each process). With the job's TLS on,
the SuperLink serves a certificate for its hosts from the job's CA, and SuperNodes trust the kits' root.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from hpcflare import errors
from hpcflare.exitcodes import ExitCode
from hpcflare.fileio import atomic_write, atomic_write_text
from hpcflare.job import FINAL_STATES, JobConfig, JobDir, JobState
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.rendezvous import SERVER, FileRendezvous, Rendezvous, incarnation
from hpcflare.security.jobs import kits_root, load_kit

STRATEGY = "flower"
EXTRA = "pip install 'hpcflare[flower]'"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')
NODE_ID = re.compile(r"SuperNode ID: (\d+)")
REPLY_ERROR = re.compile(r"error in reply from node (\d+): (.*)")
ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
ACTIVATED = re.compile(r"Activated node_id=(\d+)")
STOP_GRACE_S = 10.0
"""Seconds a Flower process gets to end after SIGTERM before it is killed."""


def is_flower(config: JobConfig) -> bool:
    return config.strategy == STRATEGY


def _tool(name: str) -> str:
    """A Flower command from this interpreter's environment (or PATH); ConfigError naming the extra if absent."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise errors.ConfigError(
            f"this job runs a Flower app, which needs Flower ({name} not found): {EXTRA}"
        )
    return found


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}


class Output:
    """A Flower process's output, line by line: kept whole in ``out_path``, the last lines remembered, errors
    (tracebacks) logged as events of the rank with their ``file:line``."""

    def __init__(
        self,
        stream: IO[bytes],
        out_path: Path,
        log: RankLogger,
        who: str,
        echo: bool = False,
        nodes: Path | None = None,
        job: JobDir | None = None,
    ) -> None:
        """``nodes``: the folder where SuperNodes record their Flower node id's site (to name it in errors);
        ``job``: the job whose status follows the ServerApp's rounds."""
        self.log, self.who, self.echo, self.nodes, self.job = log, who, echo, nodes, job
        self.rounds = (0, 0)
        """The ServerApp's last '[ROUND k/N]' (k, N)."""
        self.activated: set[str] = set()
        """Flower node ids the SuperLink activated (SuperNodes that joined, wherever their files are)."""
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream, out_path), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes], out_path: Path) -> None:
        where = ""
        with stream, open(out_path, "a", encoding="utf-8") as out:
            for raw in stream:
                line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
                out.write(line + "\n")
                out.flush()
                if not line:
                    continue
                self.tail.append(line)
                self._nodes(line)
                self._round(line)
                joined = ACTIVATED.search(line)
                if joined:
                    self.activated.add(joined[1])
                found = FILE_LINE.search(line)
                if found and "site-packages" not in found[1]:  # the app's own frame, not Flower's
                    where = f"{Path(found[1]).name}:{found[2]}"
                if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line.strip()):  # a traceback's last line
                    message = f"{self.who}: {line.strip()}" + (f" (at {where})" if where else "")
                    self.errors.append(message)
                    self.log.error("flower_error", message, where=where)
                elif self.echo and line.split(":", 1)[-1].strip():
                    self.log.info("flower", line[:2000])

    def _nodes(self, line: str) -> None:
        """Record this SuperNode's id (site side); name the site of a node whose ClientApp failed (server side)."""
        if self.nodes is None:
            return
        mine, failed = NODE_ID.search(line), REPLY_ERROR.search(line)
        if mine:
            self.nodes.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.nodes / mine[1], self.who)
        elif failed:
            record = self.nodes / failed[1]
            site = record.read_text().strip() if record.is_file() else f"node {failed[1]}"
            self.log.warning(
                "client_failed",
                f"{site}'s ClientApp failed: {failed[2]} (its log: {site}.log)",
                site=site,
                reason=f"its ClientApp failed: {failed[2]}"[:500],
            )

    def _round(self, line: str) -> None:
        """The ServerApp's '[ROUND k/N]': round k-1 is done, k started (status.json, for progress and status)."""
        found = ROUND.search(line)
        if found is None or self.job is None:
            return
        number, total = int(found[1]), int(found[2])
        if number > 1:
            self.log.info("round_completed", f"round {number - 1}/{total} completed", round=number - 1)
        self.log.info("round_started", f"round {number}/{total} started", round=number)
        self.job.write_status(JobState.RUNNING, job_id=self.job.root.name, round=number, num_rounds=total)
        self.rounds = (number, total)

    def last(self) -> str:
        """The process's last three lines, for a message that says how it ended."""
        return " | ".join(list(self.tail)[-3:])

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float, output: Output) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise errors.ConfigError(f"Flower's SuperLink exited {proc.returncode} at start: {output.last()}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise errors.RendezvousTimeoutError(
        f"Flower's SuperLink did not listen on port {port} within settings.rendezvous_timeout={timeout:g}s"
    )


def _link_tls(job_dir: JobDir, config: JobConfig, hosts: list[str]) -> list[str]:
    """The SuperLink's TLS flags: with the job's kits, a certificate for ``hosts`` issued by the job's CA (its
    key is in the kit set the job made for itself), else the server kit's own; none for a plain-text job."""
    kit = load_kit(job_dir, config, "server", role="server")
    if kit is None:
        return ["--insecure"]
    folder = job_dir.root / "flower" / "tls"
    ca_dir = kits_root(job_dir, config) / "ca"
    if (ca_dir / "rootCA.key").is_file():
        from hpcflare.security.certs import issue, pem_cert, pem_key
        from hpcflare.security.provision import load_ca, write_private

        ca_key, ca_cert, _ = load_ca(ca_dir.parent)
        key, cert = issue(ca_key, ca_cert, kit.name, hosts)
        atomic_write(folder / "cert.pem", pem_cert(cert))
        write_private(folder / "key.pem", pem_key(key))
    else:
        atomic_write(folder / "cert.pem", kit.cert_pem)
        atomic_write(folder / "key.pem", kit.key_pem, mode=0o600)
    atomic_write(folder / "rootCA.pem", kit.root_pem)
    return [
        *("--ssl-certfile", str(folder / "cert.pem"), "--ssl-keyfile", str(folder / "key.pem")),
        *("--ssl-ca-certfile", str(folder / "rootCA.pem")),
    ]


def run_link(
    job_dir: JobDir,
    log: RankLogger,
    host: str,
    advertise: str | None,
    rendezvous: Rendezvous | None,
    port: int = 0,
) -> ExitCode:
    """The server rank of a Flower job: SuperLink, then ``flwr run`` of the job's app; the job's status.
    ``port``: the one its launcher chose (a standing server's), else the app's option, else a free one."""
    config = job_dir.load_config()
    settings = config.load_settings()
    options = dict(config.strategy_args or {})
    rounds = options.get("num_rounds")
    home = job_dir.root / "flower" / "superlink"
    port = int(port or options.get("port") or _free_port(host))
    name = advertise or "127.0.0.1"
    tls = _link_tls(job_dir, config, sorted({name, socket.gethostname(), "127.0.0.1", "localhost"}))
    link = subprocess.Popen(
        [_tool("flower-superlink"), *tls, "--host", host, "--port", str(port)]
        + ["--disable-runtime-dependency-installation"],
        cwd=home.parent,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    link_out = Output(link.stdout, job_dir.log_dir / "superlink.out", log, "SuperLink")  # type: ignore[arg-type]
    try:
        _wait_listening(port, link, settings.rendezvous_timeout, link_out)
        address = f"{name}:{port}"
        secure = "TLS" if tls[0] != "--insecure" else "plain text"
        for where in [FileRendezvous(job_dir.rendezvous_dir, settings.rendezvous_timeout), rendezvous]:
            if where is not None:
                where.publish(SERVER, address, incarnation(), job_id=config.job_id, flower=True)
        log.info(
            "server_started",
            f"job {config.job_id}: Flower SuperLink listening on {address} ({secure}), "
            f"{len(config.clients)} SuperNodes expected",
            address=address,
            clients=config.clients,
            flower=True,
            node=os.environ.get("SLURMD_NODENAME", ""),
        )
        job_dir.write_status(JobState.RUNNING, job_id=config.job_id, round=0, num_rounds=config.num_rounds)
        ca = job_dir.root / "flower" / "tls" / "rootCA.pem" if secure == "TLS" else None
        return _submit(job_dir, config, log, address, ca, rounds, options.get("run_config") or {}, link_out)
    except errors.HpcflareError as exc:
        log.error("job_failed", str(exc), reason=str(exc), exit_code=int(ExitCode.CONFIG_ERROR))
        job_dir.write_status(JobState.FAILED, job_id=config.job_id, message=str(exc), exit_code=1)
        return ExitCode.CONFIG_ERROR if isinstance(exc, errors.ConfigError) else ExitCode.ROUND_FAILED
    finally:
        _stop(link)
        link_out.join(5)


def _submit(
    job_dir: JobDir,
    config: JobConfig,
    log: RankLogger,
    address: str,
    ca: Path | None,
    rounds: Any,
    run_config: dict[str, Any],
    link_out: Output,
) -> ExitCode:
    settings = config.load_settings()
    home = job_dir.root / "flower" / "cli"
    home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca}"' if ca is not None else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "hpcflare"\n\n[superlink.hpcflare]\naddress = "{address}"\n{security}\n'
    )
    overrides = {**run_config, **({"num-server-rounds": int(rounds)} if rounds else {})}
    command = [_tool("flwr"), "run", str(job_dir.app_dir), "hpcflare", "--stream"]
    for key, value in overrides.items():
        command += ["--run-config", f"{key}={_toml(value)}"]
    limit = settings.registration_timeout + max(1, config.num_rounds) * settings.round_timeout
    log.info("flower_run", f"submitting the Flower app in {job_dir.app_dir} (flwr run)", command=command[1:])
    run = subprocess.Popen(
        command,
        cwd=job_dir.app_dir,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    output = Output(
        run.stdout,  # type: ignore[arg-type]
        job_dir.models_dir / "flower_output.txt",
        log,
        "ServerApp",
        echo=True,
        nodes=job_dir.root / "flower" / "nodes",
        job=job_dir,
    )
    code, message = _watch(job_dir, config, run, limit, output, link_out)
    if message:
        _stop(run)
        output.join(5)
        log.error("job_failed", message, reason=message, exit_code=int(ExitCode.ROUND_FAILED))
        job_dir.write_status(
            JobState.FAILED, job_id=config.job_id, message=message, exit_code=int(ExitCode.ROUND_FAILED)
        )
        return ExitCode.ROUND_FAILED
    output.join(10)
    failed = code != 0 or any("ERROR" in line.split(":", 1)[0] for line in output.tail)
    if failed:
        cause = output.errors[-1] if output.errors else output.last()
        message = f"the Flower run failed (flwr run exited {code}): {cause}"
        log.error("job_failed", message, reason=message, exit_code=int(ExitCode.ROUND_FAILED))
        job_dir.write_status(
            JobState.FAILED, job_id=config.job_id, message=message, exit_code=int(ExitCode.ROUND_FAILED)
        )
        return ExitCode.ROUND_FAILED
    last, total = output.rounds
    if last:
        log.info("round_completed", f"round {last}/{total} completed", round=last)
    log.info(
        "job_completed",
        f"job {config.job_id} completed: the Flower app ran; its output is in {job_dir.models_dir / 'flower_output.txt'}",
    )
    job_dir.write_status(
        JobState.COMPLETED,
        job_id=config.job_id,
        round=last or config.num_rounds,
        num_rounds=total or config.num_rounds,
    )
    return ExitCode.OK


def _watch(
    job_dir: JobDir, config: JobConfig, run: subprocess.Popen, limit: float, output: Output, link: Output
) -> tuple[int | None, str]:
    """Wait for ``flwr run`` to end: (its exit code, ''), or (None, why the job cannot go on): a SuperNode that
    died, too few SuperNodes by settings.registration_timeout, or ``limit`` seconds in all."""
    settings = config.load_settings()
    started, flower_dir, seen = time.monotonic(), job_dir.root / "flower", set()
    while True:
        code = run.poll()
        if code is not None:
            return code, ""
        waited = time.monotonic() - started
        dead = sorted(flower_dir.glob("failed/*"))
        if dead:
            return None, f"{dead[0].name}'s Flower SuperNode died: {dead[0].read_text().strip()[:500]}"
        nodes = {p.name: p.read_text().strip() for p in (flower_dir / "nodes").glob("*")}
        for node in sorted(set(nodes) - seen):  # the server's log names every site that joined
            seen.add(node)
            output.log.info(
                "client_registered",
                f"{nodes[node]} joined (Flower node {node})",
                site=nodes[node],
                node_id=node,
            )
        joined = set(nodes.values())  # sites that share this job directory say who they are
        count = max(len(joined), len(link.activated))  # the SuperLink counts the others too
        if waited > settings.registration_timeout and count < config.min_clients:
            missing = [s for s in config.clients if s not in joined]
            return None, (
                f"only {count} of {len(config.clients)} Flower SuperNodes joined within "
                f"settings.registration_timeout={settings.registration_timeout:g}s (min_clients="
                f"{config.min_clients})" + (f"; missing: {missing[:10]}" if joined else "")
            )
        if waited > limit:
            return None, (
                f"the Flower run did not end within {limit:g}s (settings.registration_timeout + num_rounds x "
                f"settings.round_timeout); last output: {output.last()}"
            )
        time.sleep(0.5)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_nodes(job_dir: JobDir, name: str, sites: list[str], address: str | None = None) -> ExitCode:
    """A client rank of a Flower job: one SuperNode per site, until the job ends (or a SuperNode dies)."""
    config = job_dir.load_config()
    settings = config.load_settings()
    log = RankLogger(job_dir.log_dir, name, "client")
    nodes: list[tuple[str, subprocess.Popen, Output]] = []
    try:
        link = (
            address
            or FileRendezvous(job_dir.rendezvous_dir, settings.rendezvous_timeout)
            .lookup(SERVER, settings.rendezvous_timeout)
            .address
        )
        kit = load_kit(job_dir, config, name)
        security = (
            ["--root-certificates", str(kit.path / "rootCA.pem")] if kit is not None else ["--insecure"]
        )
        for site in sites:
            index = config.clients.index(site)
            home = job_dir.root / "flower" / site
            node_config = f"partition-id={index} num-partitions={len(config.clients)}"
            proc = subprocess.Popen(
                [_tool("flower-supernode"), *security, "--superlink", link, "--node-config", node_config]
                + ["--port", str(_free_port("127.0.0.1"))],
                cwd=home.parent,
                env=_env(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            (job_dir.root / "flower" / "pids").mkdir(parents=True, exist_ok=True)
            atomic_write_text(job_dir.root / "flower" / "pids" / site, str(proc.pid))
            out = Output(
                proc.stdout,
                job_dir.log_dir / f"{site}.out",
                log,
                site,
                nodes=job_dir.root / "flower" / "nodes",
            )  # type: ignore[arg-type]
            nodes.append((site, proc, out))
            log.info(
                "registered",
                f"{site}: Flower SuperNode started ({node_config}), SuperLink {link}",
                site=site,
                node=os.environ.get("SLURMD_NODENAME", ""),
            )
        while True:
            state = job_dir.read_status().get("state")
            if state in FINAL_STATES:
                log.info("site_done", f"{name}: the job ended ({state}); stopping its SuperNodes")
                return ExitCode.OK
            for site, proc, out in nodes:
                if proc.poll() is not None:
                    code = proc.returncode
                    cause = (
                        f"killed by signal {-code} ({signal.Signals(-code).name})"
                        if code < 0
                        else f"exited {code}" + (f": {out.errors[-1]}" if out.errors else "")
                    )
                    log.error("site_failed", f"{site}: Flower SuperNode {cause}", site=site)
                    (job_dir.root / "flower" / "failed").mkdir(parents=True, exist_ok=True)
                    atomic_write_text(
                        job_dir.root / "flower" / "failed" / site, cause
                    )  # the server fails the job
                    return ExitCode.TRAIN_SCRIPT_FAILED
            time.sleep(0.5)
    except errors.HpcflareError as exc:
        log.error("site_failed", f"{name}: {exc}")
        return ExitCode.CONFIG_ERROR if isinstance(exc, errors.ConfigError) else ExitCode.SERVER_LOST
    finally:
        for _, proc, out in nodes:
            _stop(proc)
            out.join(5)
        log.close()
