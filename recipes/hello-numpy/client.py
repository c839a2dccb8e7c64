# NVFlare's hello-numpy client script, unchanged: hpcflare serves `nvflare.client` in client ranks (the job's
# nvflare_compat option; 'auto' = on unless the real nvflare is installed). Porting by hand instead is one
# line: `import hpcflare.client as flare`.
import argparse
import copy

import numpy as np
import nvflare.client as flare


def train(input_arr, add=1.0):
    output_arr = copy.deepcopy(input_arr)
    # mock training with plus one (or --add)
    output_arr += add
    return output_arr


def evaluate(input_arr):
    # mock evaluation metrics
    return {"weight_mean": float(np.mean(input_arr))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--update_type", choices=["full", "diff"], default="full")
    parser.add_argument("--add", type=float, default=1.0)
    parser.add_argument(
        "--num_steps", type=int, default=None, help="reported as NUM_STEPS_CURRENT_ROUND (FedAvg weight)"
    )
    args = parser.parse_args()

    flare.init()
    sys_info = flare.system_info()
    print(f"system info is: {sys_info}", flush=True)

    while flare.is_running():
        input_model = flare.receive()
        print(f"current_round={input_model.current_round}")
        print(f"received weights is: {input_model.params}", flush=True)

        input_numpy_array = input_model.params["numpy_key"]
        output_numpy_array = train(input_numpy_array, args.add)
        metrics = evaluate(output_numpy_array)

        print(f"finish round: {input_model.current_round}", flush=True)
        meta = {} if args.num_steps is None else {"NUM_STEPS_CURRENT_ROUND": args.num_steps}
        if args.update_type == "diff":
            params = {"numpy_key": output_numpy_array - input_numpy_array}
            flare.send(flare.FLModel(params=params, params_type="DIFF", metrics=metrics, meta=meta))
        else:
            flare.send(
                flare.FLModel(
                    params={"numpy_key": output_numpy_array}, params_type="FULL", metrics=metrics, meta=meta
                )
            )


if __name__ == "__main__":
    main()
