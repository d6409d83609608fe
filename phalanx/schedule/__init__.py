"""Batching policies behind one interface: ``POLICIES[name]()`` and ``schedule_graph``."""
from __future__ import annotations

from ..ir.graph import GraphArrays
from .agenda import AgendaPolicy
from .base import Frontier, Policy, Schedule, format_schedule, verify_schedule
from .bound import lower_bound
from .depth import DepthPolicy
from .fsm import FSMPolicy
from .optimal import OptimalPolicy

POLICIES: dict[str, type[Policy]] = {"depth": DepthPolicy, "agenda": AgendaPolicy, "fsm": FSMPolicy,
                                     "optimal": OptimalPolicy}


def make_policy(policy: "str | Policy") -> Policy:
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}") from None


def schedule_graph(graph: GraphArrays, policy: "str | Policy" = "depth") -> Schedule:
    return make_policy(policy).schedule(graph)


__all__ = ["POLICIES", "Frontier", "Policy", "Schedule", "AgendaPolicy", "DepthPolicy", "FSMPolicy", "OptimalPolicy",
           "format_schedule",
           "lower_bound", "make_policy", "schedule_graph", "verify_schedule"]
