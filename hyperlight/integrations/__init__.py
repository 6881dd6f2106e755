"""The Transformers / PEFT plug-in. Importing this package does not import transformers; the classes do
so lazily where they need it."""

from .config import HyperConfig as HyperConfig
from .model import HyperModel as HyperModel
from .model import get_hyper_model as get_hyper_model
