"""Small helpers shared by the worker and the producers: the S3 client and its error classification,
CLI argument types.

The producers import this package, so it stays light: nothing here imports torch, numpy or PIL.
"""
