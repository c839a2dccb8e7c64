"""``nvflare.recipe``: the Envs, Run and helpers NVFlare's job.py files import from it."""

from hpcflare.nvflare.envs import PocEnv as PocEnv
from hpcflare.nvflare.envs import ProdEnv as ProdEnv
from hpcflare.nvflare.envs import Run as Run
from hpcflare.nvflare.envs import SimEnv as SimEnv
from hpcflare.nvflare.utils import add_cross_site_evaluation as add_cross_site_evaluation
from hpcflare.nvflare.utils import add_experiment_tracking as add_experiment_tracking

__all__ = ["PocEnv", "ProdEnv", "Run", "SimEnv", "add_cross_site_evaluation", "add_experiment_tracking"]
