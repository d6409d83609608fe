"""Builds the optional native fast paths: recording (phalanx/ir/_columns.c, NOTE: [Native columns]),
the plan stage's per-batch loops (phalanx/memory/_plan.c, NOTE: [Native plan]) and the executor's
group-run reads (phalanx/runtime/_groups.c, NOTE: [Native group reads]). Everything else is in
pyproject.toml. Without a C compiler the build goes on without them and phalanx uses the pure-Python
twins in phalanx/ir/columns.py, phalanx/memory/native.py and phalanx/runtime/native.py (same
behaviour, slower)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("phalanx.ir._columns", ["phalanx/ir/_columns.c"], optional=True),
                   Extension("phalanx.memory._plan", ["phalanx/memory/_plan.c"], optional=True),
                   Extension("phalanx.runtime._groups", ["phalanx/runtime/_groups.c"], optional=True)])
