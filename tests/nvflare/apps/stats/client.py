# NVFlare's hello-tabular-stats generator shape: a DFStatisticsCore that loads each site's CSV.

import pandas as pd
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.statistics.df.df_core_statistics import DFStatisticsCore


class PeopleStatistics(DFStatisticsCore):
    def __init__(self, filename, data_root_dir="/tmp/nvflare/df_stats/data"):
        super().__init__()
        self.data_root_dir = data_root_dir
        self.filename = filename
        self.data: dict[str, pd.DataFrame] | None = None

    def load_data(self, fl_ctx: FLContext) -> dict[str, pd.DataFrame]:
        client_name = fl_ctx.get_identity_name()
        self.log_info(fl_ctx, f"load data for client {client_name}")
        df = pd.read_csv(f"{self.data_root_dir}/{client_name}/{self.filename}")
        train = df.iloc[: int(len(df) * 0.8)]
        test = df.iloc[int(len(df) * 0.8) :]
        return {"train": train, "test": test}

    def initialize(self, fl_ctx: FLContext):
        self.data = self.load_data(fl_ctx)
