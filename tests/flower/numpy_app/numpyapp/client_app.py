"""ClientApp: adds a seeded, partition-dependent step to the weights; weight = partition-id + 1."""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if pid == int(context.run_config["fail-partition"]):
        raise ValueError(f"partition {pid} has no data")
    time.sleep(float(context.run_config["sleep"]))
    weights = msg.content["arrays"].to_numpy_ndarrays()[0]
    step = np.random.default_rng([int(context.run_config["seed"]), pid]).normal(size=weights.shape)
    content = RecordDict(
        {"arrays": ArrayRecord([weights + step]), "metrics": MetricRecord({"num-examples": pid + 1})}
    )
    return Message(content=content, reply_to=msg)
