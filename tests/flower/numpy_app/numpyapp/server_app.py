"""ServerApp: FedAvg over every SuperNode, the final weights printed as one JSON line."""

import json

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = int(context.run_config.get("min-nodes", 2))
    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(4)]),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    print("FINAL " + json.dumps(result.arrays.to_numpy_ndarrays()[0].tolist()))
