"""Bad input gets a clear error naming what was wrong, and the next run works."""
import pytest
import torch
from torch import nn

import phalanx
from phalanx.data import synthetic
from phalanx.models import TreeLSTM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TreeLSTM(30, 8, embed_dim=4)


def trees(n=3):
    return synthetic.random_trees(n, 0, 30)


def assert_next_run_works(batcher, model):
    with torch.no_grad():
        expected = [model(t) for t in trees()]
        got = phalanx.Batcher(model)(trees())
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert phalanx.frontend.recorder.active() is None


def test_exception_in_instance_code_names_the_instance(model):
    def fn(tree):
        if tree.size() == 5:
            raise ValueError("bad tree")
        return model(tree)

    instances = [synthetic.random_binary_tree(n, 1, 30) for n in (1, 2, 3, 4)]
    with pytest.raises(phalanx.InstanceError, match=r"instance 2: ValueError: bad tree") as info:
        phalanx.Batcher(fn)(instances)
    assert info.value.index == 2
    assert isinstance(info.value.__cause__, ValueError)
    assert_next_run_works(None, model)


def test_cell_with_mismatched_shapes_names_cell_and_shapes(model):
    def fn(tree):
        h, c = model.encode(tree)
        wide = torch.cat([h, h], dim=-1)           # 16 wide, the internal cell wants 8
        return model.internal(wide, c, h, c)

    with pytest.raises(phalanx.CellCallError, match=r"instance 0: cell TreeLSTMInternal cannot run on operands "
                                                    r"\(float32\[16\], float32\[8\], float32\[8\], float32\[8\]\)"):
        phalanx.Batcher(fn)(trees())
    assert_next_run_works(None, model)


def test_phalanx_errors_raised_in_instance_code_carry_the_instance(model):
    def fn(tree):
        if tree.size() > 1:
            h, _ = model.encode(tree)
            return h.tolist()       # a fiber decision, then a result that is not tensors
        return model(tree)

    instances = [synthetic.random_binary_tree(1, 0, 30), synthetic.random_binary_tree(3, 0, 30)]
    with pytest.raises(phalanx.ResultStructureError) as info:
        phalanx.Batcher(fn)(instances)
    assert info.value.instance == 1 and str(info.value).startswith("instance 1:")


def test_unsupported_op_names_the_op(model):
    def fn(tree):
        h, _ = model.encode(tree)
        return torch.nonzero(h > 0)               # data-dependent output shape: cannot batch

    with pytest.raises(phalanx.UnsupportedOpError, match=r"torch\.nonzero"):
        phalanx.Batcher(fn)(trees())
    assert_next_run_works(None, model)


def test_in_place_op_on_lazy_value_is_rejected_by_name(model):
    def fn(tree):
        h, _ = model.encode(tree)
        return h.add_(1)

    with pytest.raises(phalanx.UnsupportedOpError, match=r"instance 0: .*Tensor\.add_"):
        phalanx.Batcher(fn)(trees())
    assert_next_run_works(None, model)


def test_data_dependent_control_flow_outside_a_call_is_reported(model):
    def fn(tree):
        h, _ = model.encode(tree)
        return h if h.sum() > 0 else -h

    # Batcher calls run fibers (tests/unit/test_fibers.py); record() makes one graph, so it cannot.
    with pytest.raises(phalanx.DataDependentError, match=r"instance 0: bool\(\) on LazyValue"):
        phalanx.Batcher(fn).record(trees())
    assert_next_run_works(None, model)


def test_result_that_is_not_a_tensor_structure(model):
    def fn(tree):
        return {"h": model(tree), "name": "tree"}

    with pytest.raises(phalanx.ResultStructureError, match=r"instance 0: .*containing str"):
        phalanx.Batcher(fn)(trees())
    assert_next_run_works(None, model)


def test_cell_returning_non_tensor_is_reported():
    @phalanx.cell
    def bad(x):
        return x.shape

    with pytest.raises(phalanx.CellCallError, match=r"cell .*bad returned"):
        phalanx.Batcher(lambda x: bad(x))([torch.ones(2)])


def test_lazy_value_escaping_its_run(model):
    leaked = []

    def fn(tree):
        h, _ = model.encode(tree)
        leaked.append(h)
        return h

    phalanx.Batcher(fn)(trees(1))
    with pytest.raises(phalanx.PhalanxError, match="outside the phalanx run"):
        torch.tanh(leaked[0])

    def reuse(tree):
        return model.classifier(leaked[0])

    with pytest.raises(phalanx.PhalanxError, match="finished phalanx run"):
        phalanx.Batcher(reuse)(trees(1))
    assert_next_run_works(None, model)


def test_nested_runs_are_rejected(model):
    inner = phalanx.Batcher(model)

    def fn(tree):
        return inner([tree])[0]

    with pytest.raises(phalanx.PhalanxError, match="cannot be nested"):
        phalanx.Batcher(fn)(trees(1))
    assert_next_run_works(None, model)


def test_wrong_native_batching_claim_is_caught():
    # The user promises the cell is batch-polymorphic, but cat(dim=0) is not: the runtime shape
    # check names the cell instead of returning garbage.
    @phalanx.cell(batching="native")
    def joined(a, b):
        return torch.cat([a, b])

    with pytest.raises(phalanx.BatchExecutionError, match=r"cell .*joined.*returned shape \(6, 3\)"):
        phalanx.Batcher(lambda x: joined(x, x))([torch.ones(3)] * 3)


def test_unknown_policy_and_bad_batching_mode():
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        phalanx.Batcher(lambda x: x, policy="fastest")
    with pytest.raises(ValueError, match="batching must be one of"):
        phalanx.cell(nn.Linear(2, 2), batching="magic")


def test_backward_twice_is_a_clear_error(model):
    out = phalanx.Batcher(model)(trees(2))
    loss = torch.stack(out).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(phalanx.PhalanxError, match="backward through a phalanx flush twice"):
        loss.backward()
    model.zero_grad()


def test_out_of_range_word_id_names_the_instance(model):
    instances = trees(4)
    bad = synthetic.random_binary_tree(3, 7, 30)
    next(bad.leaves()).word = 1000                     # the vocabulary has 30 words
    instances.insert(2, bad)
    with pytest.raises(phalanx.BatchExecutionError, match=r"instance 2: cell TreeLSTMLeaf fails .*IndexError") as info:
        with torch.no_grad():
            phalanx.Batcher(model)(instances)
    assert info.value.instance == 2
    assert_next_run_works(None, model)


@pytest.mark.parametrize("content", [b"", b'{"format": "phalanx-fsm-policy", "vers', b"\xff\xfe\x00garbage",
                                     b'{"format": "phalanx-fsm-policy", "version": 1}'])
def test_bad_policy_file_names_the_path(tmp_path, content):
    path = tmp_path / "broken.fsm.json"
    path.write_bytes(content)
    with pytest.raises(phalanx.PolicyMismatchError, match=str(path)):
        phalanx.FSMPolicy.load(path)


def test_cli_reports_a_bad_policy_file_without_a_traceback(tmp_path, capsys):
    from phalanx.cli import main

    path = tmp_path / "empty.fsm.json"
    path.write_text("")
    code = main(["bench", "treelstm", "--batch-size", "2", "--hidden", "8", "--batches", "1", "--repeats", "1",
                 "--policy", "fsm", "--policy-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_cell_returning_a_different_structure_in_a_batch_names_the_cell():
    @phalanx.cell(batching="native")
    def split(x):
        return tuple(x)                     # 2 outputs per instance, but one per ROW of a batch

    with pytest.raises(phalanx.ResultStructureError, match=r"cell split returned a tuple of 5 here but a tuple of 2"):
        with torch.no_grad():
            phalanx.Batcher(lambda x: split(x))([torch.randn(2) for _ in range(5)])


def test_tensor_on_another_device_names_both_devices(model):
    with pytest.raises(phalanx.PhalanxError, match=r"instance 0: a tensor in the instance is on meta but the model is on cpu"):
        phalanx.Batcher(lambda x: x * 2)([torch.zeros(3, device="meta")])


def test_numpy_function_on_a_lazy_value_points_to_torch():
    import numpy as np

    with pytest.raises(phalanx.UnsupportedOpError, match=r"numpy's tanh on a lazy value.*torch\.tanh"):
        phalanx.Batcher(lambda x: np.tanh(x))([torch.zeros(3)])
