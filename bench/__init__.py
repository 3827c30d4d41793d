"""Wiber's benchmark: `python -m bench` (or `make bench`), side by side with its peers in one run.

Modules: `raw` (the pyzmq ceiling), `wiber_bench`, `nats_bench` (JetStream, default sync and
`sync_interval: always`), `pysyncobj_bench` (+ `pysyncobj_node`, one node process), `report` (the
table, ratios and JSON), `common` (figures, bounds, child processes). docs/design.md section 7.
"""
