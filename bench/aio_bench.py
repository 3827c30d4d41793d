"""The asyncio pattern side by side: many tasks, each awaiting its own publish, through one client.

``aio_gathered_rate``: `AIO_TASKS` tasks share one client and each publishes its share of
`Bounds.messages` one at a time, awaiting each acknowledgement, so `AIO_TASKS` publishes are in
flight at once: what an asyncio application with many concurrent producers does (a web server's
handlers, say), as opposed to one loop that pipelines on purpose (`publish_async`, the Publisher).

* Wiber: `wiber.aio.Client` (one DEALER, requests matched by id, exactly-once sessions; ``window``
  4,096 so the session window never holds a task back), `Client.publish` per message; each ack means
  a majority has the message on disk.
* NATS: nats-py's ``js.publish`` per message (each awaits its PubAck) on one connection.

Both run inside their system's section of the same run (`wiber_bench.run`, `nats_bench._run_async`),
bounded by the count and by `Bounds.seconds`: at the deadline each task stops after its current publish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import PAYLOAD, Bounds, Progress, Section, rate

#: Tasks publishing at once: as many as the pipelined row keeps in flight.
AIO_TASKS = 1000
#: Publishes of the warm-up (connection, leader's caches), not timed.
WARM_UP = 200
WORKLOAD = "aio_gathered_rate"


async def gathered(publish: Callable[[], Awaitable[Any]], count: int, seconds: float, desc: str,
                   progress: bool) -> tuple[int, float, int]:
    """Publish `count` messages from `AIO_TASKS` tasks, each awaiting `publish()` one at a time.

    Returns: (acknowledged, seconds from the first publish to the last ack, failed).
    """
    acked = failed = 0
    deadline = time.monotonic() + seconds
    with Progress(desc, count, progress) as bar:
        async def task(share: int) -> None:
            nonlocal acked, failed
            for _ in range(share):
                if time.monotonic() >= deadline:
                    return
                try:
                    await publish()
                except Exception:  # noqa: BLE001 - counted, and reported in the figure's note
                    failed += 1
                    continue
                acked += 1
                bar.update()

        shares = [count // AIO_TASKS + (1 if k < count % AIO_TASKS else 0) for k in range(AIO_TASKS)]
        start = time.perf_counter()
        await asyncio.gather(*(task(share) for share in shares if share))
        elapsed = time.perf_counter() - start
    return acked, elapsed, failed


def _note(what: str, failed: int) -> str:
    return f"{AIO_TASKS} asyncio tasks, one client, each awaits {what} per message" + \
        (f"; {failed} failed" if failed else "")


def wiber(section: Section, addrs: list[str], bounds: Bounds, progress: bool,
          options: dict[str, Any]) -> None:
    """Measure `WORKLOAD` with `wiber.aio.Client` on `addrs` (the leader first); `options`: its keys."""
    from wiber.aio import Client, Timeouts

    async def main() -> tuple[int, float, int]:
        timeouts = Timeouts(per_try_s=5.0, total_s=max(30.0, bounds.seconds))
        async with Client(addrs, timeouts, window=4096, **options) as client:
            await asyncio.gather(*(client.publish("aio-warm", PAYLOAD) for _ in range(WARM_UP)))
            return await gathered(lambda: client.publish("aio", PAYLOAD), bounds.messages, bounds.seconds,
                                  f"wiber asyncio ({AIO_TASKS} tasks, wiber.aio.Client)", progress)

    acked, elapsed, failed = asyncio.run(main())
    section.add(WORKLOAD, rate(acked, elapsed), "msg/s", acked,
                note=_note("wiber.aio.Client.publish", failed))


async def nats(section: Section, js: Any, bounds: Bounds, progress: bool) -> None:
    """Measure `WORKLOAD` with nats-py's ``js.publish`` on one JetStream context."""
    await asyncio.gather(*(js.publish("bench.aio-warm", PAYLOAD) for _ in range(WARM_UP)))
    acked, elapsed, failed = await gathered(lambda: js.publish("bench.aio", PAYLOAD, timeout=10.0),
                                            bounds.messages, bounds.seconds,
                                            f"{section.system} asyncio ({AIO_TASKS} tasks, js.publish)",
                                            progress)
    section.add(WORKLOAD, rate(acked, elapsed), "msg/s", acked,
                note=_note("js.publish (its PubAck)", failed))
