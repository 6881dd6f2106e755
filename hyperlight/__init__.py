"""hyperlight: hypernetworks for PyTorch, and a PEFT-style plug-in that conditions Transformers models.

The core (`nn`, `hypernet`, `hypernetize`, `find`) needs only torch and is imported here. The plug-in
(`hyperlight.plugin`: `HyperConfig`, `HyperModel`, `get_hyper_model`, `CheckpointError`) is imported on first
use of one of its names, and never imports transformers itself until a model needs it.
"""

import importlib as _importlib
import typing as _typing

from ._version import __version__ as __version__
from .find import find_modules_from_patterns as find_modules_from_patterns
from .find import find_modules_of_type as find_modules_of_type
from .find import find_parameters_from_patterns as find_parameters_from_patterns
from .hypernet import HyperNet as HyperNet
from .hypernetize import hypernetize as hypernetize
from .hypernetize import hypernetize_single as hypernetize_single
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
from .restore import unhypernetize as unhypernetize

if _typing.TYPE_CHECKING:
    from .plugin import CheckpointError as CheckpointError
    from .plugin import HyperConfig as HyperConfig
    from .plugin import HyperModel as HyperModel
    from .plugin import get_hyper_model as get_hyper_model

# the plug-in's names, imported from hyperlight.plugin on first use
_PLUGIN_NAMES = ("CheckpointError", "HyperConfig", "HyperModel", "get_hyper_model")
# the original library's spelling of HyperNet (the README of hyperlight 0.0.5 uses it): the same class
Hypernet = HyperNet

__all__ = [
    "CheckpointError",
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


def __getattr__(name: str) -> object:
    if name in _PLUGIN_NAMES:
        value = getattr(_importlib.import_module(".plugin", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'hyperlight' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PLUGIN_NAMES))
