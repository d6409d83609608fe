"""``explain`` draws a valid PNG / SVG and says the same in text, for a user's own model."""
import numpy as np
import pytest
import torch

import phalanx
from phalanx.debug.drawing import positions
from phalanx.errors import PhalanxError

from .test_diagnose import Pooler, _sentences

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "pooler.png"
    torch.manual_seed(0)
    with torch.no_grad():
        explanation = phalanx.Batcher(Pooler(-1), policy="agenda").explain(_sentences([2, 3, 3, 5]), out=out)
    return explanation, out


def test_drawing_is_a_png(explained):
    _, out = explained
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000


def test_svg_drawing_and_bad_suffix(explained, tmp_path):
    explanation, _ = explained
    svg = explanation.draw(tmp_path / "sub" / "pooler.svg")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "lower bound" in text
    with pytest.raises(PhalanxError, match=r"pooler\.pdf.*\.png or \.svg"):
        explanation.draw(tmp_path / "pooler.pdf")


def test_text_has_every_section_and_one_line_per_batch(explained):
    explanation, _ = explained
    text = str(explanation)
    schedule = explanation.schedule
    assert text.startswith(f"4 instances, {explanation.graph.num_nodes} nodes")
    assert f"{len(schedule)} batches with policy `agenda`, lower bound {explanation.bound}" in text
    for section in ("op types", "where the time goes", "graph by depth", "timeline", "diagnosis"):
        assert section in text
    timeline = [line for line in text.splitlines() if line.startswith("  b") and " gathers " in line]
    assert len(timeline) == len(schedule)
    for line, nodes in zip(timeline, schedule.batches, strict=True):
        assert f" x{len(nodes):<4d}" in line
    rows = {r["name"]: r for r in explanation.type_rows() if r["name"] == "cell Embed"}
    assert rows["cell Embed"]["nodes"] == 13 and rows["cell Embed"]["bound"] == 1


def test_layout_puts_each_depth_on_one_row(explained):
    explanation, _ = explained
    graph = explanation.graph
    x, y = positions(graph, np.zeros(graph.num_nodes, dtype=np.int64))
    assert np.array_equal(y, -graph.node_depth)
    assert ((x > 0) & (x < 1)).all()
    for d in np.unique(graph.node_depth):
        assert len(np.unique(x[graph.node_depth == d])) == int((graph.node_depth == d).sum())


def test_empty_batch_explains_and_draws(tmp_path):
    with torch.no_grad():
        explanation = phalanx.Batcher(Pooler()).explain([], out=tmp_path / "empty.png")
    assert str(explanation).startswith("0 instances, 0 nodes") and explanation.findings == []
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC
