"""hello-numpy: FedAvg on a 3x3 numpy array; each client adds 1 per round.

python recipes/hello-numpy/job.py [--env local|sim|mpi|slurm] [--n-clients 2] [--num-rounds 3]
                                  [--update-type full|diff] [--nodes 2] [--dry-run] [--export-only]
                                  [--tls auto|on|off]
"""

import argparse
from pathlib import Path

import numpy as np
import safetensors.numpy

from hpcflare.recipe import FedAvgRecipe, job_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=2, rounds=3, privacy=("secagg", "he"))
    parser.add_argument("--update-type", choices=["full", "diff"], default="full")
    parser.add_argument(
        "--tls",
        choices=["auto", "on", "off"],
        default="auto",
        help="mutual TLS on every channel (auto: on for slurm/mpi, off for local/sim)",
    )
    args = parser.parse_args()

    recipe = FedAvgRecipe(
        name="hello-numpy",
        model={"numpy_key": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)},
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=f"--update_type {args.update_type}",
        tls=args.tls,
        nvflare_compat="on",  # client.py is NVFlare's script, unchanged: serve nvflare.client even beside a real NVFlare
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = job_cli.plain_result(run, args)  # an HE job's result is ciphertext: decrypted with a site's key
    print(f"job {run.get_job_id()}: {run.get_status()['state']}")
    print(f"result model: {result}")
    print(f"final weights:\n{safetensors.numpy.load_file(str(result))['numpy_key']}")


if __name__ == "__main__":
    main()
