"""A site's own XGBoost data loader, written against NVFlare's spec."""

import numpy as np
import xgboost as xgb
from nvflare.app_opt.xgboost.data_loader import XGBDataLoader


class NpyDataLoader(XGBDataLoader):
    def __init__(self, data_path: str, seed: int = 0):
        self.data_path = data_path
        self.seed = seed

    def load_data(self):
        table = np.loadtxt(f"{self.data_path}/{self.client_id}/train.csv", delimiter=",")
        valid = np.loadtxt(f"{self.data_path}/{self.client_id}/valid.csv", delimiter=",")
        return xgb.DMatrix(table[:, 1:], label=table[:, 0]), xgb.DMatrix(valid[:, 1:], label=valid[:, 0])
