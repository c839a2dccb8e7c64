"""Federated statistics client: each site summarizes its own (synthetic) patient table; raw rows stay here."""

import numpy as np

import hpcflare.client as flare
from hpcflare.client.stats import local_statistics

flare.init()
site = int(flare.get_site_name().rsplit("-", 1)[-1])
rng = np.random.default_rng(site)
n = 150 * site
table = {
    "age": rng.normal(45 + 4 * site, 12, size=n).clip(18, 95),
    "bmi": rng.lognormal(np.log(26), 0.15, size=n),
    "length_of_stay": rng.exponential(3.5 + site, size=n),
}
while flare.is_running():
    task = flare.receive()
    flare.send(flare.FLModel(params=local_statistics(table, task.meta)))
