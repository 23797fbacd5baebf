"""``invad alerts``: the reference downstream consumer of the Redis alert stream.

It reads ``{prefix}:alerts`` in a consumer group, hands each alert (anomaly or drift) to a delivery
(one JSON line on stdout, or a POST to a webhook) and acknowledges it only after that; see
:mod:`worker.alerts.consumer` for the delivery guarantee and docs/OPERATIONS.md for operations.
"""
