"""A site's training script: adds the number in the site's own data file (its data_root, never the admin's)."""

import argparse
import time

import hpcflare.client as flare

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()

flare.init()
with open(args.data) as f:
    add = float(f.read())
site = flare.get_site_name()
if (
    "." in site
):  # one of an institution's virtual clients (site_clients): site-1.2 adds a tenth more per number
    add += float(site.rsplit(".", 1)[1]) / 10
while flare.is_running():
    model = flare.receive()
    time.sleep(args.sleep)
    weights = model.params["w"] + add
    flare.send(flare.FLModel(params={"w": weights}, metrics={"w_mean": float(weights.mean())}))
