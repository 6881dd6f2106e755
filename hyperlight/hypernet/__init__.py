"""Hypernetworks: generators that map conditions to the tensors a hypernetized model needs."""

from .encoding import encode as encode
from .hypernet import HyperNet as HyperNet
