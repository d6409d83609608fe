"""CellProgram: the batched program of one cell signature, with its parameters as explicit inputs.

Call convention of every program graph: ``(size, *params, *hoisted, *operands) -> tuple``. ``params``
are read from the module at every call (so a replaced, frozen or retyped parameter is seen);
``hoisted`` come from a ``HoistCache`` keyed on the parameters' identity, version, dtype and
``requires_grad`` plus the grad mode, so an optimizer step (which bumps ``_version``) recomputes them.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.utils._pytree import tree_unflatten

from ..errors import BatchExecutionError
from ..ir.aval import AVal
from .options import CellOptions


@contextlib.contextmanager
def _quiet_torch_internals():
    """Warnings torch raises inside its own compiler, not about the user's code: dynamo reads ``.grad``
    of every tensor input (hoisted values are non-leaf in training); Inductor calls deprecated
    torch.jit helpers. (Recompiles happen inside compiled calls, so every call is wrapped.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.")
        yield


class CellCompileWarning(UserWarning):
    """``torch.compile`` of a cell program failed; the uncompiled program runs instead."""


class ParamReader:
    """The current tensors behind dotted names of a module. Read from the owning module's
    ``_parameters`` / ``_buffers`` dict (where ``Module.__setattr__`` puts a replacement), not through
    ``Module.__getattr__``'s Python fallback (microseconds per name, on every batch)."""

    def __init__(self, module: nn.Module | None, names: tuple[str, ...]):
        self.names = names
        self._where = []
        for name in names:
            owner, _, attr = name.rpartition(".")
            m = module.get_submodule(owner) if owner else module
            table = m._parameters if attr in m._parameters else m._buffers if attr in m._buffers else None
            self._where.append((m, attr, table))

    def __call__(self) -> list[torch.Tensor]:
        out = []
        for m, a, table in self._where:
            t = table.get(a) if table is not None else None
            out.append(t if t is not None else getattr(m, a))
        return out


class HoistCache:
    """Hoisted values of one parameter state. NOTE: [Hoist cache key] identity, ``_version``, dtype
    and ``requires_grad`` of every parameter, the grad / inference mode (values made under no_grad
    must not serve a training call) and, with grad on, ``epoch``, which the runtime bumps once per
    flush (``CellProgram.begin_flush``) so that a training flush never reuses a graph that a previous
    backward freed. Before the first ``begin_flush``, every grad-mode call recomputes."""

    def __init__(self, module: fx.GraphModule):
        self.module = module
        self.key: Any = None
        self.values: tuple = ()
        self.epoch = 0
        self.computed = 0     # how many times the values were computed (tests, stats)

    def get(self, params: list[torch.Tensor]) -> tuple:
        grad = torch.is_grad_enabled()
        # with grad on, values are shared only inside a flush the runtime announced (begin_flush):
        # a caller that backprops without retain_graph may have freed their graph
        epoch = (self.epoch if self.epoch else object()) if grad else None
        key = (grad, torch.is_inference_mode_enabled(), epoch,
               *[(id(p), p._version, p.dtype, p.requires_grad) for p in params])
        if key != self.key:
            self.values = tuple(self.module(*params))
            self.key = key
            self.computed += 1
        return self.values


class CellProgram:
    """The batched program of one cell signature.

    ``program(operands, size)`` takes per-row operands with a leading batch dimension (the contract
    of ``runtime.kernels.BatchedKernel.__call__``) and returns the flat tuple of batched outputs;
    ``unflatten`` rebuilds the cell's output structure. ``mode`` is ``traced`` or ``vmap``.
    """

    def __init__(self, name: str, mode: str, options: CellOptions, in_avals: tuple[AVal, ...],
                 out_avals: tuple[AVal, ...], out_spec: Any, params: ParamReader,
                 hoist: HoistCache | None, main: Callable | None, info: dict,
                 graph: fx.Graph | None = None, num_leading: int = 0):
        self.name = name
        self.mode = mode
        self.options = options
        self.in_avals = in_avals
        self.out_avals = out_avals
        self.out_spec = out_spec
        self.params = params
        self.hoist = hoist
        self.main = main
        self.info = info
        self.graph = graph                  # the per-row fx graph (traced mode), for analyses and tests
        self.num_leading = num_leading      # placeholders before the operands: size, params, hoisted
        self.compiled = None
        self.inference: Callable | None = None    # NOTE: [In-place inference], built on first no_grad call
        self.training: Callable | None = None     # NOTE: [Deferred GEMM gradients], built on first grad call
        # NOTE: [Consumed operands]: operand positions a caller may hand over to be overwritten
        self.consumable: frozenset[int] = frozenset()
        # no_grad variants built on first use: (consume, direct outputs) -> (program, which outputs
        # it writes into buffers the caller passes; NOTE: [Direct outputs])
        self.variants: dict = {}
        self.retrace: Callable[[], CellProgram] | None = None   # set by compile_cell
        self.param_key = self._param_key(params())

    @staticmethod
    def _param_key(params: list[torch.Tensor]) -> tuple:
        return tuple((p.dtype, p.shape) for p in params)

    def _refresh(self, params: list[torch.Tensor]) -> None:
        """A parameter changed dtype or shape (``model.double()``): trace again, keep this object."""
        retrace, consumable = self.retrace, self.consumable
        self.__dict__.update(retrace().__dict__)
        self.retrace, self.consumable = retrace, consumable

    def __call__(self, operands: list[torch.Tensor], size: int, consume: bool = False,
                 into: "list | None" = None) -> tuple[torch.Tensor, ...]:
        """``consume``: the operands at ``consumable`` positions are the caller's to lose (NOTE:
        [Consumed operands]); ``into``: per output, the buffer to compute it into or None, where
        ``direct_outputs()`` says the no_grad program can (NOTE: [Direct outputs]). Both are honoured
        under no_grad only; a caller passing ``into`` gets those outputs in the buffers."""
        if len(operands) != len(self.in_avals):
            raise BatchExecutionError(f"{self.name}: {len(operands)} operands, the cell takes {len(self.in_avals)}")
        if size == 0:
            device = operands[0].device if operands else None
            return tuple(torch.zeros((0, *a.shape), dtype=a.dtype, device=device) for a in self.out_avals)
        params = self.params()
        if self.param_key != self._param_key(params):
            if self.retrace is None:
                raise BatchExecutionError(f"{self.name}: the cell's parameters changed dtype or shape since this "
                                          f"program was split off; split the retraced program again")
            self._refresh(params)
        hoisted = self.hoist.get(params) if self.hoist is not None else ()
        # dynamo specializes sizes 0 and 1: a single row runs the plain program instead of recompiling
        if self.compiled is not None and size > 1:
            run = self.compiled
        elif torch.is_grad_enabled():
            run = self.training or self._training_program()
        elif into is not None:
            run, direct = self._variant(consume and bool(self.consumable), True)
            if direct == tuple(b is not None for b in into):
                return tuple(run(size, *params, *hoisted, *operands, *[b for b in into if b is not None]))
            # retraced meanwhile (another program): compute, then copy into the buffers asked for
            outs = tuple((self.inference or self._inference_program())(size, *params, *hoisted, *operands))
            for b, o in zip(into, outs, strict=True):
                if b is not None:
                    b.copy_(o)
            return outs
        elif consume and self.consumable:
            run = self._variant(True, False)[0]
        else:
            run = self.inference or self._inference_program()
        return tuple(run(size, *params, *hoisted, *operands))

    def bind(self) -> "Callable | None":
        """NOTE: [Bound programs] a no_grad flush calls a program once per batch of its op type, and
        each ``__call__`` re-checks what cannot change inside a flush, which runs no user code
        between batches: the parameters' dtypes and shapes, the hoisted values' cache key (a tuple
        per parameter), which variant a ``consume`` / ``into`` asks for. ``bind`` does that once and
        returns ``run(operands, size, consume, into)`` with ``__call__``'s no_grad contract (``into``
        as ``direct_outputs()`` says); None where every call must go through ``__call__`` (grad
        mode, a compiled program, parameters that changed shape)."""
        prefix = self._bound_prefix()
        if prefix is None:
            return None
        plain = self.inference or self._inference_program()
        direct = self.direct_outputs()
        into_plain = self._variant(False, True)[0] if direct is not None else None
        arity, slow, variant, consumable = len(self.in_avals), self.__call__, self._variant, bool(self.consumable)

        def run(operands, size, consume=False, into=None):
            if size == 0 or len(operands) != arity:
                return slow(operands, size, consume, into)
            if into is not None:
                if consume and consumable:      # built on first use, like __call__'s
                    program, got = variant(True, True)
                    if got != direct:
                        return slow(operands, size, consume, into)
                else:
                    program = into_plain
                    if program is None:
                        return slow(operands, size, consume, into)
                return program(size, *prefix, *operands, *[b for b in into if b is not None])
            return (variant(True, False)[0] if consume and consumable else plain)(size, *prefix, *operands)

        return run

    def direct_call(self, consume: bool) -> "tuple[Callable, tuple] | None":
        """NOTE: [Bound programs] for an op type whose every output the no_grad program computes
        into the caller's buffers (NOTE: [Direct outputs]): ``(program, prefix)`` such that
        ``program(size, *prefix, *operands, *buffers)`` (size >= 1, one buffer per output) is a
        ``run(operands, size, consume, buffers)`` of ``bind``'s without its per-call checks. None
        where that does not hold (grad mode, compiled, parameters that changed shape, some output
        not direct)."""
        prefix = self._bound_prefix()
        if prefix is None:
            return None
        direct = self.direct_outputs()
        if direct is None or not all(direct):
            return None
        program, got = self._variant(consume and bool(self.consumable), True)
        if got != direct:
            return None
        return program, prefix

    def _bound_prefix(self) -> "tuple | None":
        """The leading arguments of a no_grad program call (parameters, then hoisted values), checked
        once for a flush; None where every call must go through ``__call__`` (grad mode, a compiled
        program, parameters that changed shape)."""
        if torch.is_grad_enabled() or self.compiled is not None:
            return None
        params = self.params()
        if self.param_key != self._param_key(params):
            return None
        return (*params, *(self.hoist.get(params) if self.hoist is not None else ()))

    def direct_outputs(self) -> "tuple[bool, ...] | None":
        """Which outputs the no_grad program can compute straight into a caller's buffer (NOTE:
        [Direct outputs]); None when none can, or when calls may run another program."""
        if self.compiled is not None or self.graph is None or not self.options.inplace:
            return None
        return self._variant(False, True)[1]

    def _variant(self, consume: bool, direct: bool) -> tuple:
        """A no_grad program: in place (NOTE: [In-place inference]), overwriting the consumable
        operands if ``consume`` (NOTE: [Consumed operands]), writing eligible outputs into buffers
        passed after the operands if ``direct`` (NOTE: [Direct outputs])."""
        found = self.variants.get((consume, direct))
        if found is not None:
            return found
        run, into = self.inference or self._inference_program(), None
        if self.graph is not None and self.options.inplace and (consume or direct):
            from .inplace import direct_calls, inplace_graph, outputs_into

            placeholders = [n for n in self.graph.nodes if n.op == "placeholder"][self.num_leading:]
            owned = frozenset(placeholders[p].name for p in self.consumable) if consume else frozenset()
            graph, rewritten = inplace_graph(self.graph, owned)
            if consume:
                self.info["consumed_ops"] = rewritten - self.info.get("in_place_ops", 0)
            direct_calls(graph)
            if direct:
                into = outputs_into(graph, self.out_avals)
            run = graph_program(graph).forward
        found = self.variants[(consume, direct)] = (run, into)
        return found

    def _inference_program(self) -> Callable:
        """The main program with its own temporaries overwritten in place (NOTE: [In-place inference])
        and direct calls (NOTE: [Direct calls], cells/inplace.py), called through ``forward`` (no
        module-call machinery: a program has no hooks)."""
        run = getattr(self.main, "forward", self.main)
        if self.graph is not None and self.options.inplace:
            from .inplace import direct_calls, inplace_graph

            graph, rewritten = inplace_graph(self.graph)
            self.info["in_place_ops"] = rewritten
            if direct_calls(graph) or rewritten:
                run = graph_program(graph).forward
        self.inference = run
        return run

    def _training_program(self) -> Callable:
        """The main program for grad mode: torch's bindings called directly (NOTE: [Direct calls]
        hold with autograd too: same kernels, same derivative formulas; this graph has no in-place
        op, so the unsafe splits' missing view marks are moot) and, with ``defer_grads``, weight
        GEMMs that leave their weight gradient to the end of a training flush (NOTE: [Deferred GEMM
        gradients], cells/defer.py)."""
        run = getattr(self.main, "forward", self.main)
        if self.graph is not None:
            from .defer import defer_gemms
            from .inplace import copy_graph, direct_calls

            graph = copy_graph(self.graph)
            if self.options.defer_grads:
                shared = set([n for n in graph.nodes if n.op == "placeholder"][1:self.num_leading])
                self.info["deferred_gemms"] = defer_gemms(graph, shared)
            if direct_calls(graph) or self.info.get("deferred_gemms"):
                run = graph_program(graph).forward
        self.training = run
        return run

    def unflatten(self, outs) -> Any:
        return tree_unflatten(list(outs), self.out_spec)

    def hoisted_values(self) -> tuple[torch.Tensor, ...]:
        """The hoisted values for the current parameters (computed if stale)."""
        return self.hoist.get(self.params()) if self.hoist is not None else ()

    def begin_flush(self) -> None:
        """Called by the runtime once per flush (NOTE: [Hoist cache key])."""
        if self.hoist is not None:
            self.hoist.epoch += 1

    def describe(self) -> str:
        parts = [self.mode]
        info = self.info
        if self.mode == "traced":
            parts.append(f"{info.get('ops', 0)} ops per batch")
            if self.hoist is not None:
                parts.append(f"{info.get('hoisted', 0)} hoisted values")
            if info.get("merged"):
                parts.append(f"merged matmuls {info['merged']}")
            if info.get("sparse_embeddings"):
                parts.append(f"{info['sparse_embeddings']} row-sparse embeddings")
            if self.compiled is not None:
                parts.append(f"compiled in {info['compile_s']:.2f} s")
        return f"{self.name}: " + ", ".join(parts)

    def __repr__(self) -> str:
        return f"<CellProgram {self.describe()}>"

    # *** code generation ***

    def compile(self, example_size: int = 8) -> None:
        """``torch.compile`` the main graph with a dynamic batch size, warmed up now so the compile
        time is reported (``info['compile_s']``); on failure warn and keep the plain program."""
        if self.main is None:
            return
        start = time.perf_counter()
        try:
            dynamo = torch.compile(self.main, dynamic=True, fullgraph=True)

            def compiled(*args):
                with _quiet_torch_internals():
                    return dynamo(*args)

            examples = [a.zeros().expand(example_size, *a.shape).clone() for a in self.in_avals]
            params = self.params()
            hoisted = self.hoist.get(params) if self.hoist is not None else ()
            # both modes the runtime uses: inference (no_grad) and training (grad through the program)
            with torch.no_grad():
                compiled(example_size, *params, *hoisted, *examples)
            hoisted = self.hoist.get(params) if self.hoist is not None else ()
            examples = [e.requires_grad_() if e.is_floating_point() else e for e in examples]
            compiled(example_size, *params, *hoisted, *examples)
        except Exception as e:  # any backend failure falls back; the warning says why
            warnings.warn(f"{self.name}: torch.compile failed, running the traced program: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", CellCompileWarning,
                          stacklevel=2)
            return
        self.compiled = compiled
        self.info["compile_s"] = time.perf_counter() - start


def graph_program(graph: fx.Graph) -> fx.GraphModule:
    """Python code for a program graph (no attributes: every tensor is an input)."""
    return fx.GraphModule(nn.Module(), graph)
