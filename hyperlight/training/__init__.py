"""Training a hyper model: collators and task mixtures for `transformers.Trainer`, and adapter distillation.

TRL's trainers live in `hyperlight.training.trl` (importing it imports `trl`, the `trl` extra).
"""

from .data import HyperDataCollator as HyperDataCollator
from .data import MultiTaskSampler as MultiTaskSampler
from .data import mixing_weights as mixing_weights
from .data import temperature_mixture as temperature_mixture
from .distill import AdapterError as AdapterError
from .distill import DistillReport as DistillReport
from .distill import distill_adapters as distill_adapters

__all__ = [
    "AdapterError",
    "DistillReport",
    "HyperDataCollator",
    "MultiTaskSampler",
    "distill_adapters",
    "mixing_weights",
    "temperature_mixture",
]
