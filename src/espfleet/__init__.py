"""espfleet: from ESP32 prototype to a secure fleet.

Layers (each only imports the ones above it in this list):
``formats`` and ``chips`` (pure data and codecs), ``pki``, ``provisioning``,
``device`` (the virtual ESP32), ``backend``, ``audit``, ``cli``.
"""

from __future__ import annotations

from espfleet.errors import EspfleetError, FormatError, InputError

__version__ = "0.1.0"

__all__ = ["EspfleetError", "FormatError", "InputError", "__version__"]
