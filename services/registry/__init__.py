"""The adapter registry: immutable, versioned LoRA adapters (`student@vN`) and which one is promoted.

Training jobs publish into it; the student replicas read it to resolve `student` and `student@vN`.
"""

from services.registry.manifest import AdapterTampered
from services.registry.registry import AdapterRegistry, AdapterVersion, RegistryError
from services.registry.validate import AdapterInvalid, validate_adapter

__all__ = [
    "AdapterInvalid", "AdapterRegistry", "AdapterTampered", "AdapterVersion", "RegistryError", "validate_adapter",
]
