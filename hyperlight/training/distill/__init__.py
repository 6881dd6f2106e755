from .errors import AdapterError as AdapterError
from .errors import AdapterKeyError as AdapterKeyError
from .loop import DistillReport as DistillReport
from .loop import distill_adapters as distill_adapters
