"""Recording a mini-batch: run the per-instance function on every instance with lazy values.

Shared by ``Batcher`` (which then flushes) and by policy training (which only needs graphs), so the
scheduler never imports the API layer."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import InstanceError, PhalanxError, ResultStructureError
from ..ir.signature import SignatureTable
from . import recorder as _recorder
from .ragged import RaggedStack, materialize_all
from .value import LazyValue

_LEAF_TYPES = (torch.Tensor, LazyValue, type(None))
_is_lazy_type = frozenset((LazyValue,)).__contains__


def model_of(fn) -> "torch.nn.Module | None":
    """The model a per-instance function runs: ``fn`` itself, a bound method's module, or the first
    module a plain function or lambda closes over or names as a global (``lambda x: model(x)``).
    Its structure is what every call re-checks, and its submodules are exposed while recording."""
    if isinstance(fn, torch.nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        return owner
    code = getattr(fn, "__code__", None)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:       # an empty cell
            continue
        if isinstance(value, torch.nn.Module):
            return value
    names = getattr(fn, "__globals__", {})
    for name in code.co_names if code is not None else ():
        value = names.get(name)
        if isinstance(value, torch.nn.Module):
            return value
    return None


def model_device(root) -> torch.device:
    """Where a model's batched values live: the device of its first parameter or buffer (CPU if none)."""
    if isinstance(root, torch.nn.Module):
        for t in root.parameters():
            return t.device
        for t in root.buffers():
            return t.device
    return torch.device("cpu")


def record_instances(fn: Callable[[Any], Any], instances: list, table: SignatureTable, *, lazy_inputs: bool = True,
                     device: torch.device | None = None):
    """Record ``instances`` into a new Recorder; returns it and, per instance, its flattened result
    ``(leaves, rebuild)``. Errors name the instance; the thread's recorder slot is always reset."""
    slot = _recorder._SLOT
    if slot.rec is not None:
        raise PhalanxError("phalanx runs cannot be nested (a Batcher was called while recording)")
    rec = _recorder.Recorder(table, device)
    outputs = []
    exposed = expose_submodules(table.root)
    slot.rec = rec
    try:
        for i, instance in enumerate(instances):
            outputs.append(record_one(fn, rec, i, instance, lazy_inputs))
    finally:
        slot.rec = None
        hide_submodules(exposed)
    return rec, outputs


def record_one(fn: Callable[[Any], Any], rec, i: int, instance, lazy_inputs: bool = True):
    """Record instance ``i`` into ``rec``; its flattened result ``(leaves, rebuild)``. Errors name it."""
    rec.begin_instance(i)
    try:
        out = fn(rec.lazify(instance) if lazy_inputs else instance)
    except PhalanxError as e:
        # Same exception object (type, attributes, traceback), message naming the instance.
        if e.instance is None:
            e.args = (f"instance {i}: {e.args[0] if e.args else ''}", *e.args[1:])
            e.instance = i
        raise
    except RecursionError as e:
        raise InstanceError(i, f"RecursionError: {e} (the instance is nested too deeply for Python's "
                               f"recursion limit, sys.getrecursionlimit())") from e
    except Exception as e:
        raise InstanceError(i, f"{type(e).__name__}: {e}") from e
    return flatten_result(out, i)


def expose_submodules(root) -> list:
    """NOTE: [Fast submodule access] natural code reaches cells as ``self.leaf``, and
    ``nn.Module.__getattr__`` (a Python fallback after the instance dict misses) costs about as much
    as recording the call itself. While a run records, every submodule of the model is also put into
    its parent's instance ``__dict__``, where attribute lookup finds it first; it is removed when
    recording ends. Assigning a module during the run stays consistent (``nn.Module.__setattr__``
    removes the name from ``__dict__``)."""
    exposed = []
    if root is None:
        return exposed
    for m in root.modules():
        d = m.__dict__
        for name, child in m._modules.items():
            if child is not None and name not in d:
                d[name] = child
                exposed.append((d, name, child))
    return exposed


def hide_submodules(exposed: list) -> None:
    for d, name, child in exposed:
        if d.get(name) is child:
            del d[name]


def flatten_result(out, index: int):
    t = type(out)
    if t is LazyValue or isinstance(out, torch.Tensor):
        return [out], _first
    if (t is tuple or t is list) and all(map(_is_lazy_type, map(type, out))):
        return list(out), t           # a flat tuple / list of lazy values: no pytree walk
    leaves, spec = torch.utils._pytree.tree_flatten(out)
    bad = [leaf for leaf in leaves if not isinstance(leaf, _LEAF_TYPES)]
    if bad and any(type(leaf) is RaggedStack for leaf in bad):
        return flatten_result(materialize_all(out), index)     # a returned stack is the stacked value
    if bad:
        err = ResultStructureError(
            f"instance {index}: the function returned {type(out).__name__} containing "
            f"{type(bad[0]).__name__} ({bad[0]!r:.60}); results must be tensors, lazy values, None, "
            f"or tuples / lists / dicts of them")
        err.instance = index
        raise err
    return leaves, (lambda vals: torch.utils._pytree.tree_unflatten(vals, spec))


def _first(vals):
    return vals[0]
