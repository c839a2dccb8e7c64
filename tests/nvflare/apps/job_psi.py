"""NVFlare's PSI job (user_email_match's shape): DhPSIRecipe with a local PSI component."""

import sys

from local_psi import LocalPSI
from nvflare.app_common.psi.recipes.dh_psi import DhPSIRecipe
from nvflare.recipe import SimEnv

recipe = DhPSIRecipe(
    name="user_email_match",
    min_clients=3,
    local_psi=LocalPSI(data_root_dir=sys.argv[1]),
    output_path="psi/intersection.txt",
)
run = recipe.execute(SimEnv(num_clients=3, workspace_root=sys.argv[2]))
print("Job Status:", run.get_status())
print("Result can be found in :", run.get_result())
