"""inferwatch: an ML inference service that is observable by construction."""

__version__ = "0.1.0"
