# NVFlare 2.5's FedJob API: a controller and a model to the server, a ScriptRunner per site.
import sys

import numpy as np
from nvflare import FedJob
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

if __name__ == "__main__":
    job = FedJob(name="fedjob", min_clients=2)
    job.to(FedAvg(num_clients=2, num_rounds=2), "server")
    job.to({"numpy_key": np.zeros((2, 2), np.float32)}, "server")
    for i, add in ((1, 1.0), (2, 3.0)):
        job.to(
            ScriptRunner(script="client.py", script_args=f"--add {add}", framework=FrameworkType.NUMPY),
            f"site-{i}",
        )
    job.export_job(sys.argv[2])
    job.simulator_run(sys.argv[1])
