"""Producers: build ImageRefs from folders, globs, S3 prefixes or stdin and publish them to Kafka.

Modules: ``sources`` (ImageRefs and deterministic image ids), ``publisher`` (Kafka producer with delivery
reports), ``admin`` (topic creation), ``s3`` (listing and uploads), ``rate`` (token bucket), ``cli``
(`invad produce`). ``publisher`` and ``admin`` talk to Kafka, ``s3`` to S3 (through
``worker.common.s3client``, shared with the worker). Nothing here imports torch, numpy or PIL, so
`invad produce` starts without the detector's weight.
"""
