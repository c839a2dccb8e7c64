# NVFlare's hello-tabular-stats job shape.
import argparse

from client import PeopleStatistics
from nvflare.recipe.fedstats import FedStatsRecipe
from nvflare.recipe.sim_env import SimEnv

parser = argparse.ArgumentParser()
parser.add_argument("-n", "--n_clients", type=int, default=2)
parser.add_argument("-d", "--data_root_dir", type=str)
parser.add_argument("-o", "--stats_output_path", type=str, default="statistics/people_stats.json")
parser.add_argument("-w", "--workspace", type=str)
args = parser.parse_args()

statistic_configs = {
    "count": {},
    "mean": {},
    "sum": {},
    "stddev": {},
    "histogram": {"*": {"bins": 10}, "Age": {"bins": 5, "range": [0, 100]}},
    "quantile": {"*": [25, 50, 75], "Income": [10, 50, 90]},
}
generator = PeopleStatistics(filename="data.csv", data_root_dir=args.data_root_dir)
sites = [f"site-{i + 1}" for i in range(args.n_clients)]
recipe = FedStatsRecipe(
    name="stats_df",
    stats_output_path=args.stats_output_path,
    sites=sites,
    statistic_configs=statistic_configs,
    stats_generator=generator,
)
env = SimEnv(clients=sites, num_threads=args.n_clients, workspace_root=args.workspace)
recipe.execute(env=env)  # as NVFlare's example: SimEnv runs the job to its end here
