"""Detector core: pure tensor code (backbone, denoiser, inversion, scoring, calibration, bundles).

Nothing under this package imports Kafka, Redis or boto3.
"""
