"""NOTE: [Swapped parameters] (frontend/swap_gate.py): a swap of a cell module's tensors never
overlaps another thread's eager cell call, and a thread never waits for itself."""
import threading

from phalanx.frontend.swap_gate import SwapGate


class _Eager:
    def __init__(self, gate):
        self.gate = gate

    def __enter__(self):
        self.count = self.gate.enter_eager()

    def __exit__(self, *exc):
        self.gate.exit_eager(self.count)


def _in_thread(gate, kind, entered, release):
    def run():
        with (_Eager(gate) if kind == "eager" else gate.swapping()):
            entered.set()
            release.wait(5)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_thread_never_waits_for_itself():
    gate = SwapGate()
    with gate.swapping(), _Eager(gate), gate.swapping():
        pass
    with _Eager(gate), gate.swapping(), _Eager(gate):
        pass


def test_a_swap_waits_for_other_threads_eager_calls_and_blocks_new_ones():
    gate = SwapGate()
    eager_in, eager_go = threading.Event(), threading.Event()
    first = _in_thread(gate, "eager", eager_in, eager_go)
    assert eager_in.wait(5)
    swap_in, swap_go = threading.Event(), threading.Event()
    swapper = _in_thread(gate, "swapping", swap_in, swap_go)
    assert not swap_in.wait(0.2)            # an eager call of another thread is running
    eager_go.set()
    first.join(5)
    assert swap_in.wait(5)
    late_in, late_go = threading.Event(), threading.Event()
    late = _in_thread(gate, "eager", late_in, late_go)
    assert not late_in.wait(0.2)            # no eager call starts while the swap is on
    swap_go.set()
    swapper.join(5)
    assert late_in.wait(5)
    late_go.set()
    late.join(5)
