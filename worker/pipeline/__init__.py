"""The streaming pipeline: one loop (poll -> fetch -> score -> sinks -> commit) run against Kafka,
Redis and S3 in production, or against a folder, SQLite and a local folder in embedded mode.

Each external client has one module: ``kafka_io`` (kafka-python), ``redis_sink`` (redis), ``s3``
(boto3 through :mod:`worker.common.s3client`, shared by ``fetch`` and ``s3_sink``). Importing this
package imports none of them.
"""

from .config import WorkerConfig
from .errors import BadRecord, DependencyDown

__all__ = ["BadRecord", "DependencyDown", "WorkerConfig"]
