"""The agenda policy (DyNet's autobatching heuristic): among op types with ready nodes, run the
one whose remaining (unexecuted) nodes have the smallest average depth."""
from __future__ import annotations

from .base import Frontier, Policy


class AgendaPolicy(Policy):
    name = "agenda"

    def choose(self, frontier: Frontier) -> int:
        best, best_avg = -1, float("inf")
        for sid in frontier.ready_sids():
            avg = frontier.remaining_depth[sid] / frontier.remaining[sid]
            if avg < best_avg:
                best, best_avg = sid, avg
        return best
