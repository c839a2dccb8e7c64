"""Federated XGBoost, site side. histogram: join XGBoost's collective and train together (histograms are
allreduced through the server rank's tracker); bagging: add trees on this site's rows to the global forest.
Rows never leave the site; only the model's JSON does."""

import argparse

import numpy as np
import xgboost as xgb
from sklearn.metrics import roc_auc_score
from xgboost import collective

import hpcflare.client as flare
from hpcflare.client.xgboost import federated, from_params, to_params
from hpcflare.tabular.data import TableError, add_table_arguments, check_table, site_table


def same_columns_everywhere(site: str, n_features: int) -> None:
    """Inside the collective: every site must have the same feature count, or XGBoost would silently
    misalign columns. One tiny allreduce; all sites stop with the same message."""
    have = np.array([n_features], dtype=np.float64)
    low = collective.allreduce(have, collective.Op.MIN)[0]
    high = collective.allreduce(have, collective.Op.MAX)[0]
    if low != high:
        raise TableError(
            f"feature counts differ across sites ({int(low)} to {int(high)}; {site} has {n_features}): "
            "every site needs the same columns in the same order"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["histogram", "bagging"], default="histogram")
    parser.add_argument("--boost-rounds", type=int, default=50)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--nthread", type=int, default=1)
    add_table_arguments(parser, n_sites=8, rows=40_000)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    x, y, x_test, y_test = site_table(args, site)
    check_table(site, x, y, binary=True)
    params = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "tree_method": "hist",
        "max_depth": args.max_depth,
        "eta": args.eta,
        "nthread": args.nthread,
        "seed": args.seed,
    }
    while flare.is_running():
        model = flare.receive()
        if args.mode == "histogram":
            with federated(model):
                same_columns_everywhere(site, x.shape[1])
                booster = xgb.train(params, xgb.DMatrix(x, label=y), args.boost_rounds)
            auc = roc_auc_score(y_test, booster.predict(xgb.DMatrix(x_test)))
        else:
            start = from_params(model.params)
            if start is not None and start.num_features() != x.shape[1]:
                raise TableError(
                    f"{site} has {x.shape[1]} feature columns but the global model has "
                    f"{start.num_features()}; every site needs the same columns in the same order"
                )
            before = (
                roc_auc_score(y_test, start.predict(xgb.DMatrix(x_test)))
                if start is not None
                else float("nan")
            )
            booster = xgb.train(params, xgb.DMatrix(x, label=y), 1, xgb_model=start)
            auc = before  # the global model's, as every FedAvg-family recipe reports
        metrics = {"auc": float(auc)} if np.isfinite(auc) else {}
        flare.send(
            flare.FLModel(
                params=to_params(booster), metrics=metrics, meta={"NUM_STEPS_CURRENT_ROUND": len(x)}
            )
        )


if __name__ == "__main__":
    main()
