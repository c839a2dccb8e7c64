"""System and job metrics: what every rank samples, what the server counts, and where it is exported.

See ``docs/monitoring.md``. The public face::

    from hpcflare.monitoring import MetricsConfig, JobMetrics, SystemSample
"""

from hpcflare.monitoring.config import MetricsConfig as MetricsConfig
from hpcflare.monitoring.export import Exporter as Exporter
from hpcflare.monitoring.metrics import HostView as HostView
from hpcflare.monitoring.metrics import JobMetrics as JobMetrics
from hpcflare.monitoring.system import SystemSample as SystemSample
from hpcflare.monitoring.system import sampler as sampler
