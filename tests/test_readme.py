"""The README's example runs and matches the per-instance loop."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_matches_eager():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    model, trees, outs = scope["model"], scope["trees"], scope["outs"]
    batched_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    eager = [model(tree) for tree in trees]
    torch.stack(eager).sum().backward()
    for p, g in zip(model.parameters(), batched_grads, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
        assert g.abs().sum() > 0
    for e, out in zip(eager, outs, strict=True):
        torch.testing.assert_close(out, e)


def test_readme_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest" in text and "python -m pytest" in ci
    assert "phalanx bench treelstm" in text
