import os

import torch

# Every flush in the tests runs the graph / schedule / layout verifiers.
os.environ.setdefault("PHALANX_VERIFY", "1")
torch.set_num_threads(1)

# CI runs a fixed (derandomized) example set so a landing is reproducible; local runs keep
# exploring new random structures every time.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
