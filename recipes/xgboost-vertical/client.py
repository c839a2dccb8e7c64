"""Vertical XGBoost, site side: align this site's rows to the PSI intersection (sorted IDs), then train
together on XGBoost's column-split collective; only the label owner (rank 0) holds labels."""

import argparse

import numpy as np
import xgboost as xgb
from xgboost import collective

import hpcflare.client as flare
from hpcflare.client.xgboost import federated, to_params
from hpcflare.tabular.data import TableError, add_vertical_arguments, vertical_table


def same_rows_everywhere(site: str, n_rows: int) -> None:
    have = np.array([n_rows], dtype=np.float64)
    low, high = (
        collective.allreduce(have, collective.Op.MIN)[0],
        collective.allreduce(have, collective.Op.MAX)[0],
    )
    if low != high:
        raise TableError(
            f"row counts differ across sites ({int(low)} to {int(high)}; {site} has {n_rows}): align "
            "the rows with PSI first"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boost-rounds", type=int, default=30)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--eta", type=float, default=0.1)
    add_vertical_arguments(parser, n_sites=3, rows=20_000)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": args.max_depth,
        "eta": args.eta,
        "nthread": 1,
        "seed": args.seed,
    }
    while flare.is_running():
        model = flare.receive()
        owner = model.meta["xgboost"]["label_owner"] == site
        x, y = vertical_table(site, owner, args)
        with federated(model) as rank:
            same_rows_everywhere(site, len(x))
            data = xgb.DMatrix(x, label=y if rank == 0 else None, data_split_mode=xgb.core.DataSplitMode.COL)
            booster = xgb.train(params, data, args.boost_rounds)
        flare.send(flare.FLModel(params=to_params(booster), meta={"NUM_STEPS_CURRENT_ROUND": len(x)}))


if __name__ == "__main__":
    main()
