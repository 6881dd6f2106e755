"""The Transformers plug-in, in PEFT's shape: `HyperConfig` says what, `get_hyper_model` builds a `HyperModel`.

Importing this package does not import transformers; the classes do so lazily where they need it. The path of
one call and of one save and load is written down in docs/architecture.md.
"""

from .checkpoint_file import CheckpointError as CheckpointError
from .config import HyperConfig as HyperConfig
from .model import HyperModel as HyperModel
from .model import get_hyper_model as get_hyper_model
from .text import SentenceEncoder as SentenceEncoder

__all__ = ["CheckpointError", "HyperConfig", "HyperModel", "SentenceEncoder", "get_hyper_model"]
