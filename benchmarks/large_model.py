"""Large-model benchmark: an LLM-shaped model (embedding > 1 GiB at 2 GB, attention and MLP projections,
norms) through FedAvg in LocalEnv; memory and throughput of the server, the clients and the transports.

    python benchmarks/large_model.py --model-gb 0.5 1 2 --clients 4 --rounds 2 [--dtype fp32|bf16]
        [--staging] [--relays 0] [--shared-memory on|off]
        [--model-file auto|on|off] [--quantize off|fp16|bf16|int8|int4]

Per configuration it prints wall time, the server's peak RSS and the largest client's peak RSS as multiples
of the model, the tree's peak PSS, gRPC throughput per model stream (from the sites' model_received events),
the staging write throughput (server's model_staged events, with --staging) and this machine's memcpy
bandwidth, then one machine-readable line per configuration (grpc_GBps: one download stream on its own, measured first; the
table's per-site gRPC column needs --shared-memory off: with it on, LocalEnv's sites map the server's model
instead of streaming it, and it reads nan):

    RESULT server_peak_x_model=<float> client_overhead_x_model=<float> grpc_GBps=<float> memcpy_GBps=<float>

The client script adds to the received tensors in place and sends them back, so a client's own copy of the
model is 1x; its overhead is its peak RSS minus that copy, over the model size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fedavg_scale import TreeSampler  # noqa: E402

from hpcflare.env import LocalEnv  # noqa: E402
from hpcflare.rank_logger import RankLogger  # noqa: E402
from hpcflare.recipe import FedAvgRecipe  # noqa: E402
from hpcflare.runtime.host.global_model import GlobalModel  # noqa: E402
from hpcflare.runtime.host.upload import read_upload  # noqa: E402
from hpcflare.settings import Settings  # noqa: E402
from hpcflare.transport.api import ServerHandler, UpdateKind, UploadHeader  # noqa: E402
from hpcflare.transport.grpc_client import GrpcClientTransport  # noqa: E402
from hpcflare.transport.grpc_server import GrpcServer  # noqa: E402

CLIENT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    for value in model.params.values():
        value += 0.001  # in place: the script's own copy of the model is the one it received
    flare.send(flare.FLModel(params=model.params))
"""


def llm_shaped(gb: float, dtype: str) -> dict[str, np.ndarray]:
    """An embedding of ~55% of the model (one tensor > 1 GiB at 2 GB), then transformer layers of q/k/v/o and
    gate/up/down projections with two norms each, and a final norm."""
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bf16" else np.dtype(np.float32)
    total = int(gb * 1e9) // np_dtype.itemsize
    d = 2048 if total > 64 * 2048 * 2048 else 1024
    params: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": np.full((int(total * 0.55) // d, d), 0.01, np_dtype)
    }
    left, layer = total - params["model.embed_tokens.weight"].size, 0
    while left >= 4 * d * d:
        for name, shape in (
            ("self_attn.q_proj", (d, d)),
            ("self_attn.k_proj", (d, d)),
            ("self_attn.v_proj", (d, d)),
            ("self_attn.o_proj", (d, d)),
            ("mlp.gate_proj", (4 * d, d)),
            ("mlp.up_proj", (4 * d, d)),
            ("mlp.down_proj", (d, 4 * d)),
        ):
            if left < shape[0] * shape[1]:
                break
            params[f"model.layers.{layer}.{name}.weight"] = np.full(shape, 0.01, np_dtype)
            left -= shape[0] * shape[1]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            params[f"model.layers.{layer}.{norm}.weight"] = np.ones(d, np_dtype)
        layer += 1
    params["model.norm.weight"] = np.ones(d, np_dtype)
    return params


def memcpy_gbps(nbytes: int = 256 << 20, repeat: int = 5) -> float:
    src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeat))
    return nbytes / best / 1e9


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _probe_client(address: str, gb: float, dtype: str, specs: list, out: Any) -> None:
    """The probe's site, in its own process like a job's: three downloads, three uploads, the best of each."""
    settings = Settings().replace(shared_memory=False)
    model = llm_shaped(gb, dtype)
    client = GrpcClientTransport(address, settings)
    try:
        down = min(_timed(lambda: sum(len(blob) for _, blob in client.download({}, specs))) for _ in range(3))
        up = min(
            _timed(
                lambda: client.upload(UploadHeader("s", "", "task", 1, UpdateKind.FULL), list(model.items()))
            )
            for _ in range(3)
        )
        out.put((down, up))
    finally:
        client.close()


def grpc_stream_gbps(gb: float, dtype: str, children: int) -> tuple[float, float]:
    """One model download and one upload over a single loopback gRPC stream, on their own (the job's columns are
    per site with all sites streaming at once), between two processes: the real server frames and upload checks
    (spooled), the server's flow-control windows sized for ``children`` sites like the job's; the best of three
    tries (the first also pays for first touches of memory)."""
    settings = Settings().replace(shared_memory=False)
    served = GlobalModel(llm_shaped(gb, dtype), 1)

    class Handler(ServerHandler):
        def handle_unary(self, method: str, request: dict, peer: Any) -> dict:
            return {}

        def handle_download(self, request: dict, peer: Any) -> Any:
            return served.frames(tuple(request["start"]), settings.chunk_size)

        def handle_upload(self, frames: Any, peer: Any) -> dict:
            _, _, got = read_upload(frames, settings, served.params, lambda header: None)
            got.close()
            return {}

    server = GrpcServer(Handler(), settings, RankLogger(None, "server", "server"), children=children).start()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    site = context.Process(target=_probe_client, args=(server.address, gb, dtype, served.specs, out))
    site.start()
    try:
        down, up = out.get(timeout=600)
    finally:
        site.join(60)
        server.stop()
    return served.nbytes / down / 1e9, served.nbytes / up / 1e9


def events(job_root: Path, rank: str, name: str) -> list[dict]:
    path = job_root / "logs" / f"{rank}.jsonl"
    return (
        [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == name]
        if path.exists()
        else []
    )


def run_one(
    gb: float,
    clients: int,
    rounds: int,
    dtype: str,
    staging: bool,
    relays: int,
    root: Path,
    shared_memory: bool = True,
    model_file: str = "auto",
    quantize: str = "off",
) -> dict:
    script = root / "client.py"
    script.write_text(CLIENT)
    model = llm_shaped(gb, dtype)
    nbytes = sum(v.nbytes for v in model.values())
    recipe = FedAvgRecipe(
        name=f"large-{gb:g}",
        model=model,
        min_clients=clients,
        n_clients=clients,
        num_rounds=rounds,
        train_script=script,
        staging=staging,
        relays=relays,
        clients_per_rank=1,
        filters=[] if quantize == "off" else [{"type": "quantize", "mode": quantize, "block": 64}],
        settings={
            "shared_memory": shared_memory,
            **({} if model_file == "auto" else {"model_file_bytes": 1 if model_file == "on" else 1 << 62}),
        },
    )
    del model
    sampler = TreeSampler()
    sampler.start()
    t0 = time.monotonic()
    run = recipe.execute(LocalEnv(job_root=root / "jobs", verbose=False))
    recipe.model = None  # written to the job dir: the driver need not hold a copy while the job runs
    server_pid = run.server.pid  # type: ignore[attr-defined]
    try:
        run.get_result(timeout=3600)
        state = "ok"
    except Exception as exc:  # noqa: BLE001 - report it in the table
        state = f"FAILED: {exc}"[:60]
    wall = time.monotonic() - t0
    sampler.stop()
    job = run.job_dir.root
    sites = [f"site-{i}" for i in range(1, clients + 1)]
    client_pids = {run.client_pid(s) for s in sites}  # type: ignore[attr-defined]
    client_peak = max((sampler.peaks.get(p, 0) for p in client_pids), default=0)
    received = [e for s in sites for e in events(job, s, "model_received")]
    streams = [e for e in received if e.get("via") == "grpc" and e["seconds"] > 0]
    staged = [e for e in events(job, "server", "model_staged") if e.get("seconds")]
    return {
        "gb": gb,
        "nbytes": nbytes,
        "state": state,
        "wall": wall,
        "via": "/".join(sorted({e.get("via", "?") for e in received})),
        "server_x": sampler.peaks.get(server_pid, 0) / nbytes,
        "client_x": (client_peak - nbytes) / nbytes,
        "pss_gb": sampler.peak_pss / 1e9,
        "grpc": float(np.mean([e["bytes"] / e["seconds"] for e in streams])) / 1e9
        if streams
        else float("nan"),
        "staging": float(np.mean([e["nbytes"] / e["seconds"] / 1e9 for e in staged]))
        if staged
        else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-gb", type=float, nargs="+", default=[0.5])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--staging", action="store_true")
    parser.add_argument("--relays", type=int, default=0)
    parser.add_argument(
        "--shared-memory",
        choices=("on", "off"),
        default="on",
        help="off: the sites stream the model over loopback gRPC (to measure the gRPC column)",
    )
    parser.add_argument(
        "--model-file",
        choices=("auto", "on", "off"),
        default="auto",
        help="the server's model in a node-local spool file (settings.model_file_bytes: auto = from "
        "256 MiB) or in memory",
    )
    parser.add_argument(
        "--quantize",
        choices=("off", "fp16", "bf16", "int8", "int4"),
        default="off",
        help="the sites quantize their results (the quantize filter); the server dequantizes",
    )
    args = parser.parse_args()
    copy = memcpy_gbps()
    print(f"memcpy on this machine: {copy:.2f} GB/s")
    probe = min(min(args.model_gb), 1.0)  # the probe's model lives in this driver process: keep it small
    down, up = grpc_stream_gbps(probe, args.dtype, args.clients)
    print(
        f"gRPC loopback, one stream between two processes ({probe:g} GB model): download {down:.2f} GB/s, "
        f"upload {up:.2f} GB/s"
    )
    print(
        f"{'model GB':>8} {'dtype':>5} {'clients':>7} {'wall s':>7} {'server x':>8} {'client +x':>9} {'tree PSS GB':>11} "
        f"{'gRPC GB/s per site':>18} {'staging GB/s':>12} {'model via':>13}  state"
    )
    results = []
    for gb in args.model_gb:
        with tempfile.TemporaryDirectory(prefix="hpcflare-large-") as tmp:
            row = run_one(
                gb,
                args.clients,
                args.rounds,
                args.dtype,
                args.staging,
                args.relays,
                Path(tmp),
                args.shared_memory == "on",
                args.model_file,
                args.quantize,
            )
        results.append(row)
        print(
            f"{row['nbytes'] / 1e9:>8.2f} {args.dtype:>5} {args.clients:>7} {row['wall']:>7.1f} {row['server_x']:>8.2f} "
            f"{row['client_x']:>9.2f} {row['pss_gb']:>11.2f} {row['grpc']:>18.2f} {row['staging']:>12.2f} {row['via']:>13}  {row['state']}",
            flush=True,
        )
    for row in results:
        print(
            f"RESULT server_peak_x_model={row['server_x']:.3f} client_overhead_x_model={row['client_x']:.3f} "
            f"grpc_GBps={down:.3f} memcpy_GBps={copy:.3f}"
        )


if __name__ == "__main__":
    main()
