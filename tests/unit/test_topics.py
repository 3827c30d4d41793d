"""wiber.topics: the topic-name rules and the pattern matcher the node, the config and the client share,
checked against a regular-expression model of NATS-style patterns."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiber.topics import TopicPattern, covers, is_pattern, matches, name_problem, pattern_problem, publish_problem


@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("orders.*", "orders.eu", True),
    ("orders.*", "orders.us", True),
    ("orders.*", "orders.eu.x", False),
    ("orders.*", "orders", False),
    ("orders.>", "orders.eu", True),
    ("orders.>", "orders.eu.x", True),
    ("orders.>", "orders", False),
    ("orders.>", "ordersx.eu", False),
    (">", "a", True),
    ("*.eu", "orders.eu", True),
    ("*.eu", "eu", False),
    ("a.*.c.>", "a.b.c.d.e", True),
    ("orders.eu", "orders.eu", True),
    ("orders.eu", "orders.eu.x", False),
    ("a.*", "a.", True),  # a topic stored before the rules, with an empty last token, is one token
])
def test_a_pattern_matches_as_nats_subjects_do(pattern: str, topic: str, expected: bool) -> None:
    assert TopicPattern.parse(pattern).matches(topic) is expected
    assert matches(pattern.split("."), topic.split(".")) is expected


@pytest.mark.parametrize(("pattern", "prefix"), [
    ("orders.*", "orders."),
    ("orders.eu.>", "orders.eu."),
    ("a.*.c", "a."),
    ("*.eu", ""),
    (">", ""),
    ("orders.eu", "orders.eu"),
])
def test_every_matching_topic_starts_with_the_literal_prefix(pattern: str, prefix: str) -> None:
    assert TopicPattern.parse(pattern).literal_prefix == prefix


def test_which_names_are_patterns_and_which_may_take_new_messages() -> None:
    assert is_pattern("orders.*") and is_pattern(">") and is_pattern("a.>.b")
    assert not is_pattern("orders") and not is_pattern("a*b.c>") and not is_pattern("a..b")
    assert publish_problem("orders.eu") is None
    assert publish_problem("a*b.c>") is None  # '*' and '>' inside a token are plain characters
    assert "patterns are for subscriptions" in str(publish_problem("orders.*"))
    assert "patterns are for subscriptions" in str(publish_problem("orders.>"))
    for name in ("a..b", ".a", "a.", "."):
        assert "must not have an empty token" in str(publish_problem(name))
    assert name_problem("") == "a topic name must not be empty"
    assert name_problem("$hb", "a topic pattern") == \
        "a topic pattern must not start with '$' (reserved for Wiber's own channels)"
    with pytest.raises(ValueError, match="'>' may only be the last token"):
        TopicPattern.parse("a.>.b")


def _model(pattern: str) -> re.Pattern[str]:
    """Returns: `pattern` as a regular expression: `*` one token (no dot), `>` one or more tokens."""
    parts = []
    for token in pattern.split("."):
        parts.append("[^.]*" if token == "*" else ".*" if token == ">" else re.escape(token))
    return re.compile(r"\.".join(parts), re.DOTALL)


_tokens = st.lists(st.sampled_from(["a", "b", "ab", ""]), min_size=1, max_size=5)


@settings(max_examples=2000)
@given(_tokens, st.lists(st.sampled_from(["a", "b", "*", ">"]), min_size=1, max_size=5))
def test_the_matcher_agrees_with_a_regular_expression_model(topic_tokens: list[str],
                                                            pattern_tokens: list[str]) -> None:
    pattern = ".".join(pattern_tokens)
    topic = ".".join(topic_tokens)
    if pattern_problem(pattern) is not None:
        return
    assert TopicPattern.parse(pattern).matches(topic) is bool(_model(pattern).fullmatch(topic))
    if TopicPattern.parse(pattern).matches(topic):
        assert topic.startswith(TopicPattern.parse(pattern).literal_prefix)


@pytest.mark.parametrize(("outer", "inner", "covered"), [
    ("orders.*", "orders.eu", True),
    ("orders.*", "orders.*", True),
    ("orders.*", "orders.>", False),  # orders.eu.x is not within orders.*
    ("orders.>", "orders.*", True),
    ("orders.>", "orders.>", True),
    ("orders.>", "orders.*.x", True),
    ("orders.>", "orders", False),
    ("*", ">", False),
    (">", ">", True),
    (">", "a.b.*", True),
    ("*.eu", "orders.eu", True),
    ("*.eu", "*.eu", True),
    ("orders.eu", "orders.*", False),
    ("orders.eu", "orders.eu", True),
    ("orders.*.x", "orders.*.*", False),
])
def test_a_pattern_covers_another_only_when_every_topic_of_it_matches(outer: str, inner: str, covered: bool) -> None:
    assert covers(outer.split("."), inner.split(".")) is covered
