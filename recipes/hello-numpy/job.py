"""hello-numpy: FedAvg on a 3x3 numpy array; each client adds 1 per round.

    python recipes/hello-numpy/job.py [--env local|sim] [--n-clients 2] [--num-rounds 3] [--update-type full|diff]
"""

import argparse
from pathlib import Path

import numpy as np
import safetensors.numpy

from hpcflare.env import LocalEnv, SimEnv
from hpcflare.recipe import FedAvgRecipe

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=["local", "sim"], default="local")
    parser.add_argument("--n-clients", type=int, default=2)
    parser.add_argument("--num-rounds", type=int, default=3)
    parser.add_argument("--update-type", choices=["full", "diff"], default="full")
    parser.add_argument("--job-root", default="jobs")
    args = parser.parse_args()

    recipe = FedAvgRecipe(
        name="hello-numpy",
        model={"numpy_key": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)},
        min_clients=args.n_clients,
        num_rounds=args.num_rounds,
        train_script=HERE / "client.py",
        train_args=f"--update_type {args.update_type}",
    )
    env = LocalEnv(job_root=args.job_root) if args.env == "local" else SimEnv(job_root=args.job_root)
    run = recipe.execute(env)
    result = run.get_result()
    print(f"job {run.get_job_id()}: {run.get_status()['state']}")
    print(f"result model: {result}")
    print(f"final weights:\n{safetensors.numpy.load_file(str(result))['numpy_key']}")


if __name__ == "__main__":
    main()
