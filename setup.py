"""Builds the optional native recording fast path (phalanx/ir/_columns.c, NOTE: [Native columns]).
Everything else is in pyproject.toml. Without a C compiler the build goes on without it and
phalanx uses the pure-Python twin in phalanx/ir/columns.py (same behaviour, slower recording)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("phalanx.ir._columns", ["phalanx/ir/_columns.c"], optional=True)])
