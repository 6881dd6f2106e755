"""Deprecated: `hyperlight.integrations.trl` moved to `hyperlight.training.trl`."""

import warnings

from ..training.trl import HyperDPOTrainer as HyperDPOTrainer
from ..training.trl import HyperSFTTrainer as HyperSFTTrainer
from ..training.trl import PretrainedReference as PretrainedReference

warnings.warn(
    "hyperlight.integrations.trl moved to hyperlight.training.trl; import the trainers from there",
    DeprecationWarning,
    stacklevel=2,
)
