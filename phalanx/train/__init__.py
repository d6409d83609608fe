"""Training on real data: ``phalanx train MODEL`` (command.py) runs ``loop.Trainer`` over a task of
``tasks.py``, with exact-resume checkpoints (checkpoint.py) and data-parallel ranks on
torch.distributed (distributed.py)."""
from .checkpoint import CheckpointError as CheckpointError
from .loop import DEFAULTS as DEFAULTS
from .loop import TrainConfig as TrainConfig
from .loop import Trainer as Trainer
from .tasks import TASKS as TASKS
