"""Reading the file: YAML (strictly: no duplicate keys) into `Config`, or one `ConfigError` line."""

from __future__ import annotations

import os
from typing import Any

import yaml

from wiber.config.model import Config
from wiber.config.security import parse_security
from wiber.config.sections import _parse_cluster, _parse_nodes
from wiber.config.values import _FILE, _TOP, _YAML, _mapping, _short
from wiber.errors import ConfigError

__all__ = ["load_config", "parse_config"]

# --------------------------------------------------------------------------------------------------
# Loading.


def load_config(path: str) -> Config:
    """Read, parse and validate the YAML file at `path`.

    Returns:
        The validated configuration.
    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or breaks a rule of the module
            docstring; its message is one line naming the file, the key path and the problem.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(path, _FILE, f"no such file (looked for {os.path.abspath(path)})") from None
    except IsADirectoryError:
        raise ConfigError(path, _FILE, "is a directory; give the path of the YAML file") from None
    except OSError as exc:
        raise ConfigError(path, _FILE, f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL in the path
        raise ConfigError(path, _FILE, f"not a usable path: {exc}") from None
    try:
        raw = yaml.load(data, Loader=_StrictLoader)  # safe: a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(path, _YAML, _yaml_problem(exc)) from None
    except RecursionError:
        raise ConfigError(path, _YAML, "nested too deeply to be a Wiber configuration") from None
    return parse_config(raw, path)


def parse_config(raw: object, path: str) -> Config:
    """Validate an already-loaded YAML document (plain dicts, lists and scalars) as a configuration.

    `path` is only used in error messages and kept in `Config.path`.

    Returns:
        The validated configuration.
    Raises:
        ConfigError: a rule of the module docstring is broken; the message is one line.
    """
    if raw is None:
        raise ConfigError(
            path, _TOP, "the file is empty; it needs at least a `nodes` list (see conf/cluster.yaml)"
        )
    top = _mapping(path, "", raw, ("cluster", "nodes", "security"))
    if "nodes" not in top:
        raise ConfigError(
            path,
            "nodes",
            "missing required key; list the nodes, e.g. `nodes: [{id: n1, host: 127.0.0.1, port: 9101}]`",
        )
    cluster = _parse_cluster(path, top.get("cluster"))
    nodes = _parse_nodes(path, top["nodes"])
    security = parse_security(path, top["security"], nodes) if "security" in top else None
    return Config(path=path, cluster=cluster, nodes=nodes, security=security)


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # Any without stubs
    """A SafeLoader that refuses a key repeated within one mapping, which PyYAML silently overwrites."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """Returns: the mapping of `node`, after checking its own scalar keys are distinct."""
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {_short(key)} appears twice in the same mapping",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Returns: one line saying where (line, column, 1-based) and why PyYAML refused the document."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not readable as text at byte {exc.position}: {' '.join(str(exc.reason).split())}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem is None:
        text = str(exc)
    else:
        text = str(problem) + (f" ({context})" if context else "")
    text = " ".join(text.split())
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"not valid YAML: {text}"
