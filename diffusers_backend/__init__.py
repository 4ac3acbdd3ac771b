"""LocalAI-compatible gRPC backend for Hugging Face diffusers.

Kept import-light on purpose: the server must answer Health before torch and
diffusers are imported, so nothing heavy is imported at package level.
"""

__version__ = "0.1.0"
