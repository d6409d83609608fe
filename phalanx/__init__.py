"""phalanx: write a dynamic model for ONE instance in plain PyTorch; run a mini-batch as batched kernels."""
from .api import Batcher as Batcher
from .api import batch as batch
from .cells.options import CellOptions as CellOptions
from .errors import BatchExecutionError as BatchExecutionError
from .errors import CellCallError as CellCallError
from .errors import DataDependentError as DataDependentError
from .errors import InstanceError as InstanceError
from .errors import PhalanxError as PhalanxError
from .errors import PolicyMismatchError as PolicyMismatchError
from .errors import ResultStructureError as ResultStructureError
from .errors import UnsupportedOpError as UnsupportedOpError
from .frontend.align import align as align
from .frontend.cell import cell as cell
from .frontend.cell import is_cell as is_cell
from .frontend.phase import phase as phase
from .frontend.value import LazyValue as LazyValue
from .schedule import POLICIES as POLICIES
from .schedule import FSMPolicy as FSMPolicy
from .schedule import OptimalPolicy as OptimalPolicy
from .schedule import Policy as Policy
from .schedule import lower_bound as lower_bound
from .runtime.fibers import FiberStats as FiberStats
from .stats import Stats as Stats

__version__ = "0.1.0"
