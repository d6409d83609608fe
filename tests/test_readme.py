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
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        for tree, out in zip(trees, outs, strict=True):
            torch.testing.assert_close(out, model(tree))


def test_readme_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest" in text and "python -m pytest" in ci
    assert "phalanx bench treelstm" in text
