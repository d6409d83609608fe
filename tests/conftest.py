import os

import torch

# Every flush in the tests runs the graph / schedule / layout verifiers.
os.environ.setdefault("PHALANX_VERIFY", "1")
torch.set_num_threads(1)
