"""A site's PSI component, as NVFlare's user_email_match example writes it."""

import csv
import os

from nvflare.app_common.psi.psi_spec import PSI


class LocalPSI(PSI):
    def __init__(self, data_root_dir: str, psi_writer_id: str = "psi_writer"):
        super().__init__(psi_writer_id)
        self.data_root_dir = data_root_dir

    def load_items(self) -> list[str]:
        site = self.fl_ctx.get_identity_name()
        with open(os.path.join(self.data_root_dir, site, "data.csv"), newline="") as f:
            return [row["email_address"] for row in csv.DictReader(f)]
