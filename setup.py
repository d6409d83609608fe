"""Builds the optional native fast paths: recording (phalanx/ir/_columns.c, NOTE: [Native columns])
and the plan stage's per-batch loops (phalanx/memory/_plan.c, NOTE: [Native plan]). Everything else
is in pyproject.toml. Without a C compiler the build goes on without them and phalanx uses the
pure-Python twins in phalanx/ir/columns.py and phalanx/memory/native.py (same behaviour, slower)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("phalanx.ir._columns", ["phalanx/ir/_columns.c"], optional=True),
                   Extension("phalanx.memory._plan", ["phalanx/memory/_plan.c"], optional=True)])
