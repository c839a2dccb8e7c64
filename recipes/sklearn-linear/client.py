"""Federated linear model, site side: start from the global coefficients, fit a few iterations on this site's
rows (LogisticRegression warm start, or SGD with hinge loss for a linear SVM), send the coefficients."""

import argparse
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier

import hpcflare.client as flare
from hpcflare.tabular.data import add_table_arguments, check_table, site_table


def make_model(kind: str, iters: int, seed: int):
    if kind == "logreg":
        return LogisticRegression(warm_start=True, max_iter=iters, C=1.0)
    return SGDClassifier(
        loss="hinge",
        alpha=1e-4,
        learning_rate="constant",
        eta0=0.01,
        max_iter=iters,
        tol=None,
        random_state=seed,
    )


def train(
    kind: str, x: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray, iters: int, seed: int
):
    model = make_model(kind, iters, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations per round, by design
        if kind == "logreg":
            model.classes_ = np.array([0.0, 1.0])
            model.coef_, model.intercept_ = coef.copy(), intercept.copy()
            model.fit(x, y)
        else:
            model.fit(x, y, coef_init=coef.copy(), intercept_init=intercept.copy())
    return model


def accuracy(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(((x @ coef.T).ravel() + intercept[0] > 0) == (y > 0.5)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["logreg", "svm"], default="logreg")
    parser.add_argument("--local-iters", type=int, default=5)
    add_table_arguments(parser, n_sites=4, rows=40_000)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    x, y, x_test, y_test = site_table(args, site)
    while flare.is_running():
        model = flare.receive()
        coef, intercept = model.params["coef"], model.params["intercept"]
        check_table(site, x, y, n_features=coef.shape[1], binary=True)
        before = accuracy(coef, intercept, x_test, y_test)  # the global model, on held-out data
        fit = train(args.model, x, y, coef, intercept, args.local_iters, args.seed + model.current_round)
        flare.send(
            flare.FLModel(
                params={"coef": fit.coef_.astype(np.float64), "intercept": fit.intercept_.astype(np.float64)},
                metrics={"accuracy": before},
                meta={"NUM_STEPS_CURRENT_ROUND": len(x)},
            )
        )


if __name__ == "__main__":
    main()
