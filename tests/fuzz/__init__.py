"""The wire fuzzer (issue 15): seeded random and mutated frames against real nodes' client and raft
ports, then health checks (``python -m tests.fuzz.runner``, ``make fuzz``; a bounded run in CI).

* `values`      boundary values, random msgpack value trees, hand-crafted msgpack with huge lengths
* `mutate`      byte-level, value-tree and multipart mutations of valid frames
* `client_frames` / `peer_frames`  the frame families of each port
* `generators`  one seeded, replayable sample per (seed, index): the front of the families
* `health`      what a healthy cluster shows after fuzzing (alive, PING, PUB, no traceback, RSS)
* `runner`      drives a real cluster with the samples and reports
"""
