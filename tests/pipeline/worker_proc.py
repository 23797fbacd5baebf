"""A Kafka worker process for the signal tests: the real ``run_kafka`` with the real bundle INVAD_MODELS.

Configured entirely by INVAD_* variables; ``INVAD_TEST_PREDICT_DELAY_S`` slows each batch of the real
detector so a signal can land mid-batch. Exits with run_kafka's code.
"""

from __future__ import annotations

import os
import sys
import threading

from helpers import InstrumentedDetector
from worker.pipeline.cli import configure_logging, install_signal_handlers, run_kafka
from worker.pipeline.config import WorkerConfig
from worker.pipeline.models import ModelRegistry


def main() -> int:
    config = WorkerConfig.from_sources({}, os.environ, mode="kafka")
    configure_logging(config.log_level)
    stop = threading.Event()
    install_signal_handlers(stop)
    delay_s = float(os.environ.get("INVAD_TEST_PREDICT_DELAY_S", "0"))
    loaded = ModelRegistry.load(config.models, config.device)
    registry = ModelRegistry({product: InstrumentedDetector(loaded.route(product).detector, delay_s)
                              for product, _ in config.models})
    return run_kafka(config, stop, registry)


if __name__ == "__main__":
    sys.exit(main())
