"""InvAD worker: the detector core (``worker.core``) and the streaming pipeline (``worker.pipeline``)."""

__version__ = "0.1.0"
