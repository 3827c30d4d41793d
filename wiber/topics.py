"""Topic names and topic patterns (docs/design.md section 3): the rules and the one matcher that the
wire contract, the config's client rights and the client's wildcard subscriptions share.

Theory of operation
-------------------
A topic name is ``.``-separated tokens (``orders.eu``). A pattern is a name whose tokens may also be
``*`` (exactly one token) or, as its last token, ``>`` (one or more tokens), as NATS subjects are:
``orders.*`` matches ``orders.eu`` but not ``orders.eu.x``; ``orders.>`` matches both. A token holding
``*`` or ``>`` among other characters (``a*b``) is a literal in a topic name, and refused in a
pattern, where it is almost always a typo for a wildcard.

Rules, from loosest to strictest (each adds to the one before):

* `name_problem`: every name and pattern: 1 to `TOPIC_MAX_BYTES` bytes of UTF-8, no NUL, not
  starting with ``$`` (reserved for the node's own frames, such as heartbeats).
* `pattern_problem`: a pattern: no empty token, wildcards only as whole tokens, ``>`` last.
* `publish_problem`: a topic a new message may go to: no ``*`` or ``>`` token (patterns are for
  subscriptions) and no empty token (``a..b``, ``.a``, ``a.``), as NATS refuses them. Reads
  (HISTORY, SUB) refuse only the wildcard tokens, so a topic stored before these rules, with an
  empty token, stays readable; nothing already in the log is ever refused (entries apply as they are).

Nothing here touches a socket, a file or the clock: the node, the config and the client import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "TOPIC_MAX_BYTES",
    "WILDCARD_ONE",
    "WILDCARD_REST",
    "TopicPattern",
    "is_pattern",
    "matches",
    "name_problem",
    "pattern_problem",
    "publish_problem",
]

TOPIC_MAX_BYTES: Final = 255
"""Longest topic name or pattern, in bytes of UTF-8."""
WILDCARD_ONE: Final = "*"
"""A pattern token matching exactly one token of a topic."""
WILDCARD_REST: Final = ">"
"""A pattern's last token matching one or more remaining tokens of a topic."""
SEPARATOR: Final = "."
"""What separates the tokens of a topic name or pattern."""

_WILDCARDS: Final = (WILDCARD_ONE, WILDCARD_REST)


def name_problem(name: str, what: str = "a topic name") -> str | None:
    """Returns: why `name` breaks the rules every topic name and pattern obeys, or None if it keeps them;
    `what` names it in the answer ("a topic pattern", ...)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} must be valid UTF-8 text"
    if size == 0:
        return f"{what} must not be empty"
    if size > TOPIC_MAX_BYTES:
        return f"{what} must be at most {TOPIC_MAX_BYTES} bytes of UTF-8, this one is {size}"
    if "\0" in name:
        return f"{what} must not contain a NUL character"
    if name.startswith("$"):
        return f"{what} must not start with '$' (reserved for Wiber's own channels)"
    return None


def is_pattern(name: str) -> bool:
    """Returns: whether `name` has a wildcard token (``*`` or ``>`` between dots), so names many topics."""
    return any(token in _WILDCARDS for token in name.split(SEPARATOR))


def pattern_problem(pattern: str) -> str | None:
    """Returns: why `pattern` is not a topic pattern, or None if it is one.

    A pattern is tokens separated by ``.``: a literal token (not empty, without ``*`` or ``>``),
    ``*`` (exactly one token of the topic) or, as the last token only, ``>`` (one or more tokens).
    A plain topic name without empty tokens is a pattern too (it matches itself).
    """
    problem = name_problem(pattern, "a topic pattern")
    if problem is not None:
        return problem
    tokens = pattern.split(SEPARATOR)
    for position, token in enumerate(tokens):
        if not token:
            return "a topic pattern must not have an empty token (two dots in a row, or a dot at an end)"
        if token == WILDCARD_REST and position != len(tokens) - 1:
            return f"'{WILDCARD_REST}' may only be the last token of a topic pattern"
        wildcard = token in _WILDCARDS
        if not wildcard and (WILDCARD_ONE in token or WILDCARD_REST in token):
            return (f"'{WILDCARD_ONE}' and '{WILDCARD_REST}' are wildcards only as whole tokens "
                    f"(between dots), e.g. orders.* or orders.>")
    return None


def publish_problem(topic: str) -> str | None:
    """Returns: why no new message may go to `topic` (a valid name otherwise), or None when one may.

    A ``*`` or ``>`` token would make the name a pattern, and an empty token cannot be named by a
    pattern's literal token: both are refused for new messages, never for stored ones.
    """
    tokens = topic.split(SEPARATOR)
    if any(token in _WILDCARDS for token in tokens):
        return (f"is a pattern (a '{WILDCARD_ONE}' or '{WILDCARD_REST}' token): patterns are for "
                f"subscriptions (SUB, `wiber sub`); PUB, PUB_BATCH and HISTORY take one topic name")
    if not all(tokens):
        return "must not have an empty token (two dots in a row, or a dot at an end)"
    return None


def matches(pattern: Sequence[str], topic: Sequence[str]) -> bool:
    """Returns: whether the tokens of `topic` match the tokens of `pattern` (``*`` one token, ``>`` the
    one or more remaining ones, any other token itself)."""
    for position, token in enumerate(pattern):
        if token == WILDCARD_REST:
            return len(topic) > position
        if position >= len(topic) or (token != WILDCARD_ONE and token != topic[position]):
            return False
    return len(topic) == len(pattern)


def covers(outer: Sequence[str], inner: Sequence[str]) -> bool:
    """Returns: whether every topic that pattern `inner` matches is matched by pattern `outer` (both
    as tokens): what a client's read right must do for a consumer group's pattern. Matching `inner`
    as if it were a topic name is not enough: ``orders.*`` would then let a group read ``orders.>``."""
    for position, token in enumerate(outer):
        if token == WILDCARD_REST:
            return len(inner) > position  # whatever inner has from here on, one token or more
        if position >= len(inner):
            return False
        held = inner[position]
        if held == WILDCARD_REST:
            return False  # inner goes on for any number of tokens; outer does not
        if token != WILDCARD_ONE and token != held:
            return False  # a literal of outer needs the same literal in inner (inner's * could be anything)
    return len(inner) == len(outer)


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """One pattern, split once: what a wildcard subscription matches each received topic against."""

    text: str
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        """Returns: `text` as a pattern. Raises: ValueError saying why it is not one (`pattern_problem`)."""
        problem = pattern_problem(text)
        if problem is not None:
            raise ValueError(problem)
        return cls(text, tuple(text.split(SEPARATOR)))

    def matches(self, topic: str) -> bool:
        """Returns: whether `topic` is one of the topics this pattern names."""
        return matches(self.tokens, topic.split(SEPARATOR))

    @property
    def literal_prefix(self) -> str:
        """Returns: what every matching topic starts with: the tokens before the first wildcard, each
        followed by a dot (``orders.`` for ``orders.*``; empty when the pattern starts with a wildcard),
        or the whole text of a pattern without wildcards (it matches only itself)."""
        literal: list[str] = []
        for token in self.tokens:
            if token in _WILDCARDS:
                return "".join(literal)
            literal.append(token + SEPARATOR)
        return self.text
