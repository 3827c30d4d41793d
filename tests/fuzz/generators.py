"""Seeded generators of fuzz frames: sample number `index` of seed `seed` is a pure function of the
two and of the `Context` it was made for, so any sample of a run can be made again.

The families (`FAMILIES`) are those of `client_frames` and `peer_frames`, each with a weight;
`Selection` picks the ones a run uses (all but the `BYZANTINE` ones by default) and `generate`
draws one sample.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Final

from tests.fuzz import client_frames, peer_frames
from tests.fuzz.sample import CLIENT, PORTS, RAFT, Context, Sample

Maker = Callable[[random.Random, Context], Sample]

FAMILIES: Final[dict[str, tuple[Maker, float]]] = {**client_frames.FAMILIES, **peer_frames.FAMILIES}
"""Every family: name -> (maker, weight). Names start with their port (``client.``, ``raft.``)."""

BYZANTINE: Final = peer_frames.BYZANTINE
"""Families a run uses only when asked: forged Raft state that only keys stop (`peer_frames.within_trust`)."""


def port_of(family: str) -> str:
    """Returns: the port a family's samples go to."""
    return family.split(".", 1)[0]


class UnknownFamily(ValueError):
    """A family name that is not in `FAMILIES` (the message lists the known ones)."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The families a run draws from, per port (a port without any gets no samples).

    Attributes:
        only: names, ports or prefixes to use (empty: every family).
        exclude: names, ports or prefixes not to use.
        byzantine: use the `BYZANTINE` families too (a name in `only` selects one as well).

    Raises:
        UnknownFamily: a name or prefix in `only` or `exclude` matches no family.
    """

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    byzantine: bool = False

    def __post_init__(self) -> None:
        for pattern in (*self.only, *self.exclude):
            if not any(_matches(name, pattern) for name in FAMILIES):
                known = ", ".join(sorted(FAMILIES))
                raise UnknownFamily(f"no fuzz family matches {pattern!r}; known: {known}")

    def families(self, port: str) -> list[str]:
        """Returns: the selected family names of `port`, in a fixed order."""
        out = []
        for name in FAMILIES:
            if port_of(name) != port:
                continue
            if self.only and not any(_matches(name, p) for p in self.only):
                continue
            if name in BYZANTINE and not self.byzantine and name not in self.only:
                continue
            if any(_matches(name, p) for p in self.exclude):
                continue
            out.append(name)
        return out

    def ports(self) -> list[str]:
        """Returns: the ports with at least one selected family."""
        return [port for port in PORTS if self.families(port)]


def _matches(name: str, pattern: str) -> bool:
    """A pattern names a family exactly, or a port (``client``, ``raft``) or a prefix ending in ``.``."""
    if pattern.endswith("."):
        return name.startswith(pattern)
    return name == pattern or name.startswith(pattern + ".")


def parse_selection(only: Iterable[str] = (), exclude: Iterable[str] = (),
                    byzantine: bool = False) -> Selection:
    """Returns: a `Selection` from comma-separated lists (as the command line gives them)."""
    def split(items: Iterable[str]) -> tuple[str, ...]:
        return tuple(p.strip() for item in items for p in item.split(",") if p.strip())
    return Selection(split(only), split(exclude), byzantine)


def sample_rng(seed: int, index: int) -> random.Random:
    """Returns: the generator of sample `index` of `seed` (independent of every other sample)."""
    return random.Random(f"wiber-fuzz:{seed}:{index}")


def generate(seed: int, index: int, port: str, ctx: Context, selection: Selection = Selection()) -> Sample:
    """Returns: sample `index` of `seed` for `port`, aimed with `ctx`.

    Raises:
        ValueError: `port` has no selected family.
    """
    names = selection.families(port)
    if not names:
        raise ValueError(f"no fuzz family selected for the {port} port")
    rng = sample_rng(seed, index)
    name = rng.choices(names, weights=[FAMILIES[n][1] for n in names])[0]
    return FAMILIES[name][0](rng, ctx)


def plan(index: int, ports: list[str], nodes: tuple[str, ...]) -> tuple[str, str]:
    """Returns: (port, target node) of sample `index`: the ports alternate, the nodes take turns on each."""
    port = ports[index % len(ports)]
    return port, nodes[(index // len(ports)) % len(nodes)]


__all__ = ["BYZANTINE", "CLIENT", "FAMILIES", "RAFT", "Context", "Sample", "Selection", "UnknownFamily",
           "generate", "parse_selection", "plan", "port_of", "sample_rng"]
