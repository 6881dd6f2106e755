"""The Transformers / PEFT plug-in. Importing this package does not import transformers; the classes do
so lazily where they need it."""

from .config import HyperConfig as HyperConfig
from .data import HyperDataCollator as HyperDataCollator
from .data import MultiTaskSampler as MultiTaskSampler
from .data import mixing_weights as mixing_weights
from .data import temperature_mixture as temperature_mixture
from .distill import AdapterError as AdapterError
from .distill import DistillReport as DistillReport
from .distill import distill_adapters as distill_adapters
from .model import HyperModel as HyperModel
from .model import get_hyper_model as get_hyper_model
from .text import SentenceEncoder as SentenceEncoder
