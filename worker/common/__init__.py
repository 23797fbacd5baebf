"""Small helpers shared by the worker and the producers: image files, S3 clients, backoff, CLI types.

The producers import this package, so it stays light: nothing here imports torch, numpy or PIL.
"""
