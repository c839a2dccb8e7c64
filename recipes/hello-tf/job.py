"""hello-tf: FedAvg on a small Keras model (TensorFlow), synthetic data, no download.

    python recipes/hello-tf/job.py [--env local|sim|mpi|slurm] [--n-clients 2] [--num-rounds 3]

Needs TensorFlow where the job runs: pip install 'hpcflare[tf]' (tensorflow-cpu; on GPU nodes install the
tensorflow build your cluster provides). Sites send {layer name: layer.get_weights()} as NVFlare's TensorFlow
examples do; the result model (jobs/<job-id>/models/global_model.safetensors) loads back into the Keras model
with hpcflare.client.keras.set_keras_weights.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import TFNet  # noqa: E402

from hpcflare.recipe import FedAvgRecipe, job_cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=2, rounds=3)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    args = parser.parse_args()

    recipe = FedAvgRecipe(
        name="hello-tf",
        model=TFNet(),  # the server's initial weights: a Keras model's, per layer
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=f"--epochs {args.epochs}",
        extra_files=[HERE / "model.py"],
        key_metric="accuracy",
        nvflare_compat="on",
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = run.get_result()
    print(f"job {run.get_job_id()}: {run.get_status()['state']}")
    print(f"result model: {result}")


if __name__ == "__main__":
    main()
