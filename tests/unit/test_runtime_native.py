"""The executor's native group reads (runtime/_groups.c, NOTE: [Native group reads]) against their
Python twin (runtime/native.py ``group_reads_py``): the same views, joins and refusals on random
member reads; the runs of a real BiLSTM flush; and bad descriptors refused with a clear error.
Skipped where the extension was not built (the rest of the suite then runs the twin)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phalanx
from phalanx.models import BiLSTMTagger
from phalanx.runtime import executor
from phalanx.runtime import native
from phalanx.runtime.steps import GATHER, NUMBERS, SLICE, Step

pytestmark = pytest.mark.skipif(not native.NATIVE, reason="native group extension not built or PHALANX_NATIVE=0")


def _step(outputs, operands):
    return Step(None, None, 0, operands, outputs, None)


def _same(a, b, arenas):
    """Equal reads: the same values, and the same view of an arena where one is (copies differ)."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y, arenas) for x, y in zip(a, b, strict=True))
    if not (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype):
        return False
    bases = {t.untyped_storage().data_ptr() for t in arenas}
    a_view, b_view = (t.untyped_storage().data_ptr() in bases for t in (a, b))
    if a_view or b_view:        # the same rows of the same arena (output rows are not written yet)
        return a_view == b_view and (a.data_ptr(), a.stride()) == (b.data_ptr(), b.stride())
    return torch.equal(a, b)


def _compare(members, arenas):
    got = native.group_reads(members, arenas, executor._read)
    want = native.group_reads_py(members, arenas, executor._read)
    if want is None:
        assert got is None
        return None
    assert got is not None and got[2] == want[2]
    assert _same(got[0], want[0], arenas) and _same(got[1], want[1], arenas)
    return got


@st.composite
def runs(draw):
    """Members whose reads are slices that may or may not be adjacent, gathers or numbers."""
    n = draw(st.integers(1, 4))
    num_out, num_op = draw(st.integers(0, 3)), draw(st.integers(0, 3))

    def reads(count, kinds):
        cols = []
        for _ in range(count):
            arena = draw(st.integers(0, 1))
            lo = draw(st.integers(0, 5))
            col = []
            for _ in range(n):
                kind = draw(st.sampled_from(kinds))
                size = draw(st.integers(0, 3))
                if kind == SLICE:
                    other = draw(st.booleans()) and draw(st.integers(0, 1))
                    gap = draw(st.sampled_from([0, 0, 0, 1]))
                    col.append((SLICE, other if other is not False else arena, (lo + gap, lo + gap + size)))
                    lo += gap + size
                elif kind == GATHER:
                    col.append((GATHER, arena, torch.tensor([0, 2, 1][:size], dtype=torch.long)))
                else:
                    col.append((NUMBERS, torch.int64, torch.arange(size)))
            cols.append(col)
        return cols

    outs, ops = reads(num_out, [SLICE, SLICE, SLICE, GATHER]), reads(num_op, [SLICE, SLICE, GATHER, NUMBERS])
    return [_step([c[i] for c in outs], [c[i] for c in ops]) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(members=runs())
def test_group_reads_equal_the_twin(members):
    arenas = [torch.arange(40.0).reshape(20, 2), torch.arange(60.0).reshape(20, 3)]
    _compare(members, arenas)


def test_joined_and_split_reads():
    arenas = [torch.arange(20.0).reshape(10, 2)]
    a = _step([(SLICE, 0, (0, 2))], [(SLICE, 0, (4, 6)), (SLICE, 0, (8, 9)), (NUMBERS, torch.int64, torch.ones(2))])
    b = _step([(SLICE, 0, (2, 3))], [(SLICE, 0, (6, 7)), (SLICE, 0, (2, 3)), (NUMBERS, torch.int64, torch.zeros(1))])
    into, operands, joined = _compare([a, b], arenas)
    assert joined == (True, False, False)
    assert torch.equal(into[0], arenas[0][0:3]) and torch.equal(operands[0], arenas[0][4:7])
    assert [t.tolist() for t in operands[1]] == [arenas[0][8:9].tolist(), arenas[0][2:3].tolist()]
    assert [t.tolist() for t in operands[2]] == [[1, 1], [0]]
    # an output the members do not write as one slice: nothing is read
    c = _step([(SLICE, 0, (5, 6))], b.operands)
    assert _compare([a, c], arenas) is None


def test_bad_descriptors_are_refused():
    arenas = [torch.zeros(4, 2)]
    with pytest.raises(TypeError, match=r"\(kind, arena, payload\)"):
        native.group_reads([_step([(SLICE, 0)], [])], arenas, executor._read)
    with pytest.raises(TypeError, match=r"\(lo, hi\)"):
        native.group_reads([_step([(SLICE, 0, (0, 1, 2))], [])], arenas, executor._read)
    with pytest.raises(ValueError, match="twin steps with 1 and 0 outputs"):
        native.group_reads([_step([(SLICE, 0, (0, 1))], []), _step([], [])], arenas, executor._read)
    with pytest.raises(IndexError, match="arena 3 of 1"):
        native.group_reads([_step([(SLICE, 3, (0, 1))], [])], arenas, executor._read)


def test_a_bilstm_flush_reads_as_the_twin(monkeypatch):
    """Every group run of a tagger flush: the native reads equal the twin's."""
    seen = []
    real = executor.group_reads

    def both(members, arenas, read):
        seen.append(_compare(members, arenas))
        return real(members, arenas, read)

    monkeypatch.setattr(executor, "group_reads", both)
    torch.manual_seed(0)
    model = BiLSTMTagger(30, hidden=8).eval()
    sentences = [[(7 * i + j) % 30 for j in range(2 + i % 5)] for i in range(12)]
    batcher = phalanx.Batcher(model)
    with torch.no_grad():
        for _ in range(2):
            batcher(sentences)
    assert seen and all(found is not None for found in seen)
    assert any(any(found[2]) for found in seen) and any(not all(found[2]) for found in seen)   # joined and split
