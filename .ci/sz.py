"""Lines of code per module of the phalanx package, and the total: a trend to watch in CI logs,
not a gate (after tinygrad's sz.py)."""
from pathlib import Path

root = Path(__file__).resolve().parents[1] / "phalanx"
rows = sorted((sum(1 for _ in p.open(encoding="utf-8")), str(p.relative_to(root.parent))) for p in root.rglob("*.py"))
for lines, name in rows:
    print(f"{lines:6d}  {name}")
print(f"{sum(n for n, _ in rows):6d}  total ({len(rows)} files)")
