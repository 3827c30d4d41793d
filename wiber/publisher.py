"""The pipelined, auto-batching publisher, at its documented import path.

``from wiber.publisher import Publisher`` is what the README, docs/client.md and users' code say;
the publisher itself lives on the client side, in `wiber.client.publisher` (see its docstring).
"""

from __future__ import annotations

from wiber.client.publisher import Callback, Publisher, PublishFuture

__all__ = ["Callback", "PublishFuture", "Publisher"]
