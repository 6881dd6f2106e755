"""Externals: placeholders for tensors set from outside, the modules that hold them, batched layers."""

from .external import ExternalParameter as ExternalParameter
from .external import UninitializedExternalError as UninitializedExternalError
from .hypernetized import register_linear_like as register_linear_like
from .layers import HyperConv1d as HyperConv1d
from .layers import HyperConv2d as HyperConv2d
from .layers import HyperConv3d as HyperConv3d
from .layers import HyperEmbedding as HyperEmbedding
from .layers import HyperLinear as HyperLinear
from .module import HyperModule as HyperModule
from .module import capture_externals as capture_externals
