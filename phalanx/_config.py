"""Every environment flag of phalanx, read in one place."""
from __future__ import annotations

import os


def _flag(name: str, default: int = 0) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


# PHALANX_VERIFY=1 runs the graph and schedule verifiers on every flush (tests set it).
VERIFY = _flag("PHALANX_VERIFY")
# PHALANX_DEBUG>=1 prints a one-line summary per flush; >=2 also the schedule.
DEBUG = _flag("PHALANX_DEBUG")
