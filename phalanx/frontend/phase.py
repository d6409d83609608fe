"""Program phases (ACRoBat): ``with phalanx.phase("decode"):`` inside per-instance code.

Nodes recorded in different phases never share a batch, and depth restarts per phase (NOTE:
[Phase depth] in frontend/recorder.py), so the first decoder step of every instance has one depth
however long each instance's encoder was: an encoder's tail does not delay the decoders.

Phases are ranked by first use in the process ("" , the default phase, is 0); a phase of higher
rank runs after the phases of lower rank it depends on. Outside a phalanx run it does nothing, so
the model stays its own eager reference.
"""
from __future__ import annotations

from contextlib import contextmanager

from . import recorder as _recorder

_RANKS: dict[str, int] = {"": 0}


def phase_rank(name: str) -> int:
    """The rank of phase ``name`` (assigned on first use)."""
    if not isinstance(name, str):
        raise TypeError(f"phalanx.phase: a phase is named by a str, got {type(name).__name__}")
    return _RANKS.setdefault(name, len(_RANKS))


@contextmanager
def phase(name: str):
    """Record the enclosed per-instance code in phase ``name``.

    **Example:**

    >>> def translate(src):
    ...     with phalanx.phase("encode"):
    ...         h = model.encode(src)
    ...     with phalanx.phase("decode"):
    ...         return model.decode(h)
    """
    rank = phase_rank(name)
    rec = _recorder.active()
    if rec is None:
        yield
        return
    saved = rec.phase
    rec.set_phase(rank)
    try:
        yield
    finally:
        # A fiber may have been resumed under a later round's recorder: restore on the current one.
        rec = _recorder.active()
        if rec is not None:
            rec.set_phase(saved)
