"""Fault tests: a Jepsen-style workload, a nemesis and a checker that prove docs/design.md section 4.

* `history`  - operation records (invoke / ok / fail / info) as JSONL, one file per process.
* `workload` - publisher and subscriber processes that write those records.
* `netlab`   - network namespaces, a bridge, nftables cuts and tbf slow links (root only).
* `cluster`  - real node processes, on 127.0.0.1 or each in its own network namespace.
* `nemesis`  - the faults: kill -9, SIGSTOP/SIGCONT, clock skew, partitions, slow links.
* `checker`  - the final drain of every node and the verdict: lost, duplicated, inconsistent, ...
* `campaign` - a schedule of faults under a running workload, ending with the checker.
* `run`      - `python -m tests.faults.run`: a long randomized schedule (`make faults`).
"""
