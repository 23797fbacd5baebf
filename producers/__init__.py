"""Producers: build ImageRefs from folders, globs, S3 prefixes or stdin and publish them to Kafka.

Modules: ``sources`` (ImageRefs and deterministic image ids), ``publisher`` (Kafka producer with delivery
reports), ``admin`` (topic creation), ``s3`` (listing and uploads), ``rate`` (token bucket), ``cli``
(`invad produce`). Only ``publisher`` and ``admin`` import kafka, only ``s3`` imports boto3; importing
this package imports neither.
"""
