"""hyperlight: hypernetworks for PyTorch, and a PEFT-style plug-in that conditions Transformers models.

The core (this namespace) needs only torch; `hyperlight.integrations` holds the Transformers/PEFT glue and
imports those frameworks lazily.
"""

from .find import find_modules_from_patterns as find_modules_from_patterns
from .find import find_modules_of_type as find_modules_of_type
from .find import find_parameters_from_patterns as find_parameters_from_patterns
from .hypernet import HyperNet as HyperNet
from .hypernet import Hypernet as Hypernet
from .hypernetize import hypernetize as hypernetize
from .hypernetize import hypernetize_single as hypernetize_single
from .hypernetize import unhypernetize as unhypernetize
from .nn import ExternalParameter as ExternalParameter
from .nn import HyperConv1d as HyperConv1d
from .nn import HyperConv2d as HyperConv2d
from .nn import HyperConv3d as HyperConv3d
from .nn import HyperEmbedding as HyperEmbedding
from .nn import HyperLinear as HyperLinear
from .nn import HyperModule as HyperModule
from .nn import UninitializedExternalError as UninitializedExternalError
from .nn import register_linear_like as register_linear_like

__version__ = "0.1.0"

__all__ = [
    "ExternalParameter",
    "HyperConv1d",
    "HyperConv2d",
    "HyperConv3d",
    "HyperEmbedding",
    "HyperLinear",
    "HyperModule",
    "HyperNet",
    "Hypernet",
    "UninitializedExternalError",
    "__version__",
    "find_modules_from_patterns",
    "find_modules_of_type",
    "find_parameters_from_patterns",
    "hypernetize",
    "hypernetize_single",
    "register_linear_like",
    "unhypernetize",
]
