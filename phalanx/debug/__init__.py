"""Tools that show users what phalanx did with their model: ``explain`` (the recorded graph and
the schedule, drawn and in text) and ``diagnose`` (why it batches badly, ranked by cost)."""
from .diagnose import Finding, diagnose
from .explain import Explanation, explain

__all__ = ["Explanation", "Finding", "diagnose", "explain"]
