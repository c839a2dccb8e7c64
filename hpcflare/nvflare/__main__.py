"""``python -m hpcflare.nvflare JOB.py [ARGS]``."""

import sys

from hpcflare.nvflare.runner import main

sys.exit(main())
