"""Federation across institutions: a standing server, site agents on each institution's own machines, and
admins who submit jobs through a session (NVFlare's production mode and FLARE API).

    hpcflare federation serve --kit SERVER_KIT --port 8002 [--config server.yaml]
    hpcflare site serve --kit SITE_KIT --server HOST:8002 [--config site.yaml]
    hpcflare admin submit|list|status|monitor|abort|download|sites --kit ADMIN_KIT --server HOST:8002
"""

from hpcflare.federation.session import MonitorReturnCode as MonitorReturnCode
from hpcflare.federation.session import Session as Session

__all__ = ["MonitorReturnCode", "Session"]
