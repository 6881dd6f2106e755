"""Deprecated: `hyperlight.integrations.distill` moved to `hyperlight.training` (`distill_adapters`, ...)."""

import warnings

from ..training import AdapterError as AdapterError
from ..training import DistillReport as DistillReport
from ..training import distill_adapters as distill_adapters

warnings.warn(
    "hyperlight.integrations.distill moved to hyperlight.training; import distill_adapters from there",
    DeprecationWarning,
    stacklevel=2,
)
