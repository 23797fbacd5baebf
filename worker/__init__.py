"""InvAD worker: the detector core (``worker.core``), the streaming pipeline (``worker.pipeline``) and
their benchmarks (``worker.bench``)."""

__version__ = "0.1.0"
