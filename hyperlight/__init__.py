"""hyperlight: hypernetworks for PyTorch, and a PEFT-style plug-in that conditions Transformers models.

The core (this namespace) needs only torch; `hyperlight.integrations` holds the Transformers/PEFT glue and
imports those frameworks lazily.
"""

from ._version import __version__ as __version__
from .find import find_modules_from_patterns as find_modules_from_patterns
from .find import find_modules_of_type as find_modules_of_type
from .find import find_parameters_from_patterns as find_parameters_from_patterns
from .hypernet import HyperNet as HyperNet
from .hypernet import Hypernet as Hypernet
from .hypernetize import hypernetize as hypernetize
from .hypernetize import hypernetize_single as hypernetize_single
from .hypernetize import unhypernetize as unhypernetize
from .integrations import HyperConfig as HyperConfig
from .integrations import HyperModel as HyperModel
from .integrations import get_hyper_model as get_hyper_model
from .nn import ExternalParameter as ExternalParameter
from .nn import HyperConv1d as HyperConv1d
from .nn import HyperConv2d as HyperConv2d
from .nn import HyperConv3d as HyperConv3d
from .nn import HyperEmbedding as HyperEmbedding
from .nn import HyperLinear as HyperLinear
from .nn import HyperModule as HyperModule
from .nn import UninitializedExternalError as UninitializedExternalError
from .nn import capture_externals as capture_externals
from .nn import register_linear_like as register_linear_like

__all__ = [
    "ExternalParameter",
    "HyperConfig",
    "HyperConv1d",
    "HyperConv2d",
    "HyperConv3d",
    "HyperEmbedding",
    "HyperLinear",
    "HyperModel",
    "HyperModule",
    "HyperNet",
    "Hypernet",
    "UninitializedExternalError",
    "__version__",
    "capture_externals",
    "find_modules_from_patterns",
    "find_modules_of_type",
    "find_parameters_from_patterns",
    "get_hyper_model",
    "hypernetize",
    "hypernetize_single",
    "register_linear_like",
    "unhypernetize",
]
