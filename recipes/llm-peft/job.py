"""llm-peft: federated fine-tuning of a causal language model, LoRA adapters only (or the full model).

    python recipes/llm-peft/job.py [--mode lora|sft] [--size tiny|small] [--n-clients 2] [--rounds 3]
                                   [--steps 20] [--env local|sim|mpi|slurm]

The base model is a Llama-style causal LM built from a `transformers` config (random init, no download; the
same seed in every process). With ``--mode lora`` (default) each site trains LoRA adapters (`peft`) on the
attention's q/v projections and only those travel: about 1% of the model's bytes at ``tiny`` size (see each
site's "result sent ... MB of tensors" log line). ``--mode sft`` exchanges the full model instead. Each site
holds its own synthetic text (uneven sizes, its own word habits); every site reports the global model's
held-out loss (``eval_loss``) at the start of each round. Needs the ``llm`` extra:
``pip install 'hpcflare[llm]'`` (transformers, peft).
"""

import argparse
from pathlib import Path

from model import build_model, exchanged, with_lora

from hpcflare.recipe import FedAvgRecipe, job_cli

HERE = Path(__file__).resolve().parent


def define_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=2, rounds=3, privacy=("secagg",))
    parser.add_argument("--mode", choices=["lora", "sft"], default="lora")
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per site and round")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-2 for lora, 1e-3 for sft")
    return parser.parse_args()


def initial_params(mode: str, size: str) -> dict:
    """The global model the rounds start from: the initial adapters (LoRA B = 0: the base model itself) or
    every base weight (sft)."""
    model = build_model(size)
    return exchanged(with_lora(model) if mode == "lora" else model, mode)


def main():
    args = define_parser()
    lr = args.lr if args.lr is not None else (1e-2 if args.mode == "lora" else 1e-3)
    recipe = FedAvgRecipe(
        name=f"llm-{args.mode}",
        **job_cli.recipe_arguments(args),
        model=initial_params(args.mode, args.size),
        train_script=str(HERE / "client.py"),
        train_args=f"--mode {args.mode} --size {args.size} --steps {args.steps} --lr {lr}",
        extra_files=[HERE / "model.py"],
        key_metric="eval_loss",
        key_metric_mode="min",
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    print("Job status:", run.get_status()["state"] if run.wait(None) else "running")
    print("Result (the global adapters, or the full model):", run.get_result())


if __name__ == "__main__":
    main()
