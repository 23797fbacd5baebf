"""Benchmarks: ``invad bench`` (the detector) and ``invad bench pipeline`` (workers through real services).

``detector`` times the detector's stages; ``pipeline`` runs real worker processes (``worker``) with
the InvAD or the cost-free ``null_detector``, watched through Redis and ``/proc`` (``observe``), with
a sampling CPU profiler by stage (``stages``). This package depends on ``worker.core``,
``worker.pipeline``, ``producers`` and ``schemas``; nothing there imports it.
"""
