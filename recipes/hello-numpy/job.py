"""hello-numpy: FedAvg on a 3x3 numpy array; each client adds 1 per round.

    python recipes/hello-numpy/job.py [--env local|sim|mpi|slurm] [--n-clients 2] [--num-rounds 3]
                                      [--update-type full|diff] [--nodes 2] [--dry-run] [--export-only]
                                      [--tls auto|on|off]
"""

import argparse
from pathlib import Path

import numpy as np
import safetensors.numpy

from hpcflare.env import LocalEnv, MpiEnv, SimEnv, SlurmEnv
from hpcflare.recipe import FedAvgRecipe

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=["local", "sim", "mpi", "slurm"], default="local")
    parser.add_argument("--nodes", type=int, default=2, help="slurm: nodes to spread the ranks over")
    parser.add_argument("--partition", default=None, help="slurm: partition")
    parser.add_argument("--dry-run", action="store_true", help="slurm: print the sbatch script, submit nothing")
    parser.add_argument("--export-only", action="store_true", help="write the job directory and print its path")
    parser.add_argument("--n-clients", type=int, default=2)
    parser.add_argument("--min-clients", type=int, default=None, help="default: every client")
    parser.add_argument("--num-rounds", "--rounds", type=int, default=3)
    parser.add_argument("--profile", default="auto", help="settings profile (configs/*.yaml); auto: by client count")
    parser.add_argument("--update-type", choices=["full", "diff"], default="full")
    parser.add_argument("--job-root", default="jobs")
    parser.add_argument("--tls", choices=["auto", "on", "off"], default="auto",
                        help="mutual TLS on every channel (auto: on for slurm/mpi, off for local/sim)")
    args = parser.parse_args()

    recipe = FedAvgRecipe(
        name="hello-numpy",
        model={"numpy_key": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)},
        min_clients=args.min_clients or args.n_clients,
        n_clients=args.n_clients,
        num_rounds=args.num_rounds,
        settings_profile=args.profile,
        train_script=HERE / "client.py",
        train_args=f"--update_type {args.update_type}",
        tls=args.tls,
        nvflare_compat="on",  # client.py is NVFlare's script, unchanged: serve nvflare.client even beside a real NVFlare
    )
    if args.export_only:
        print(recipe.export(args.job_root).root)
        return
    env = {"local": lambda: LocalEnv(job_root=args.job_root), "sim": lambda: SimEnv(job_root=args.job_root),
           "mpi": lambda: MpiEnv(job_root=args.job_root),
           "slurm": lambda: SlurmEnv(nodes=args.nodes, partition=args.partition, job_root=args.job_root)}[args.env]()
    if args.dry_run:
        print(env.dry_run(recipe))
        return
    run = recipe.execute(env)
    result = run.get_result()
    print(f"job {run.get_job_id()}: {run.get_status()['state']}")
    print(f"result model: {result}")
    print(f"final weights:\n{safetensors.numpy.load_file(str(result))['numpy_key']}")


if __name__ == "__main__":
    main()
