"""What every `wiber` command shares: --version, the global logging options and their JSON lines, and a
help that ends with a real example for every command and subcommand (issue 18)."""

from __future__ import annotations

import io
import json
import logging

import pytest

import wiber
from wiber import cli
from wiber.cli import build_parser, walk_parsers
from wiber.cli.logs import JsonFormatter


def test_json_log_lines_are_one_object_with_the_fields_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("wiber.test_json_logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("node %s became %s", "n1", "leader", extra={"term": 3, "peer": b"n2"})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    doc = json.loads(first)
    assert doc["level"] == "WARNING" and doc["logger"] == "wiber.test_json_logs"
    assert doc["msg"] == "node n1 became leader" and doc["term"] == 3 and doc["peer"] == "b'n2'"
    assert doc["ts"].endswith("Z") and doc["pid"] > 0
    assert "ValueError: boom" in json.loads(second)["exc"]


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    parsers = list(walk_parsers(build_parser()))
    assert {prog for prog, _ in parsers} >= {"wiber", "wiber up", "wiber status", "wiber bench pub", "wiber keygen"}
    for prog, parser in parsers:
        epilog = parser.epilog or ""
        assert "example" in epilog, f"`{prog} --help` has no example"
        assert any(line.startswith("  wiber") for line in epilog.splitlines()), f"`{prog}`: no command line"
        options = {o for action in parser._actions for o in action.option_strings}
        assert {"--log-level", "--log-format"} <= options, f"`{prog}` lacks the logging options"
        with pytest.raises(SystemExit) as exited:
            cli.main([*prog.split()[1:], "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        first_example = next(line for line in epilog.splitlines() if line.startswith("  wiber"))
        assert first_example in out.splitlines(), f"`{prog} --help` rewrapped its example"


def test_version_and_global_logging_options_in_either_place(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"wiber {wiber.__version__}\n"
    assert wiber.__version__ != "0+unknown"  # read from the installed package's metadata
    parser = build_parser()
    before = parser.parse_args(["--log-level", "info", "--log-format", "json", "topics"])
    after = parser.parse_args(["topics", "--log-level", "info", "--log-format", "json"])
    default = parser.parse_args(["bench", "sub", "t"])
    assert (before.log_level, before.log_format) == (after.log_level, after.log_format) == ("info", "json")
    assert (default.log_level, default.log_format) == ("warning", "text")


def test_a_usage_error_is_still_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["status", "--log-format", "xml"])
    assert exited.value.code == 2
    assert cli.main(["status", "--count", "2", "--addr", "127.0.0.1:1"]) == 2
    assert "--watch" in capsys.readouterr().err
