"""The `security` section: where the CURVE key files live, and what each client may do
(docs/design.md section 10)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from wiber.config.model import MAX_NODE_ID_LEN, ClientRights, NodeConfig, SecurityConfig
from wiber.config.values import _NODE_ID_RE, _bool, _describe, _mapping, _path_text, _short, _str
from wiber.errors import ConfigError
from wiber.topics import WILDCARD_ONE, WILDCARD_REST, pattern_problem

# WILDCARD_ONE, WILDCARD_REST and pattern_problem live in wiber.topics (shared with the wire contract and the
# client); they stay importable from here for the modules that took them from here.
__all__ = ["WILDCARD_ONE", "WILDCARD_REST", "parse_security", "pattern_problem"]

_SECURITY_KEYS: Final = ("keys_dir", "clients")
_CLIENT_KEYS: Final = ("name", "publish", "subscribe", "admin")
_CLIENT_EXAMPLE: Final = '{name: app, publish: ["orders.>"], subscribe: [">"]}'


def parse_security(file: str, raw: object, nodes: Sequence[NodeConfig]) -> SecurityConfig:
    """Returns: the `security` section, `keys_dir` made absolute against the config file's directory.

    Raises: ConfigError (an empty section is refused: leaving it out is what turns CURVE off).
    """
    if raw is None:
        raise ConfigError(
            file, "security", "is empty; give at least keys_dir (or remove the section to run without CURVE, "
            "loopback only)"
        )
    section = _mapping(file, "security", raw, _SECURITY_KEYS, example="{keys_dir: ./keys, clients: [...]}")
    if "keys_dir" not in section:
        raise ConfigError(file, "security.keys_dir", "missing required key; the directory of the <name>.key "
                          "and <name>.key_secret files (`wiber keygen NAME --dir DIR` writes them)")
    keys_dir = _keys_dir(file, section["keys_dir"])
    clients = _parse_clients(file, section.get("clients"), {n.id for n in nodes})
    return SecurityConfig(keys_dir=keys_dir, clients=clients)


def _keys_dir(file: str, value: object) -> str:
    """Returns: `value` as an absolute path, a relative one resolved against the config file's directory."""
    text = _path_text(file, "security.keys_dir", value, "the config file's own directory")
    base = os.path.dirname(os.path.abspath(file))
    return os.path.normpath(os.path.join(base, os.path.expanduser(text)))


def _parse_clients(file: str, raw: object, node_ids: set[str]) -> tuple[ClientRights, ...]:
    """Returns: the `clients` list, names unique and distinct from node ids. Raises: ConfigError."""
    keypath = "security.clients"
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(file, keypath,
                          f"must be a list of clients like `- {_CLIENT_EXAMPLE}`, got {_describe(raw)}")
    clients: list[ClientRights] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        path = f"{keypath}[{index}]"
        entry = _mapping(file, path, item, _CLIENT_KEYS, example=_CLIENT_EXAMPLE)
        if "name" not in entry:
            raise ConfigError(file, f"{path}.name", "missing required key; the name of the client's key file "
                              "(<name>.key in keys_dir)")
        name = _client_name(file, f"{path}.name", entry["name"])
        if name in seen:
            raise ConfigError(file, f"{path}.name", f"duplicate name {name!r}, already used by "
                              f"{keypath}[{seen[name]}]; names must be unique")
        if name in node_ids:
            raise ConfigError(file, f"{path}.name", f"{name!r} is a node id: a client and a node would share "
                              f"the key files {name}.key and {name}.key_secret; give the client another name")
        seen[name] = index
        clients.append(ClientRights(
            name=name,
            publish=_patterns(file, f"{path}.publish", entry.get("publish")),
            subscribe=_patterns(file, f"{path}.subscribe", entry.get("subscribe")),
            admin=_bool(file, f"{path}.admin", entry.get("admin", False)),
        ))
    return tuple(clients)


def _client_name(file: str, keypath: str, value: object) -> str:
    """Returns: `value` if it can name a key file (the rule of node ids). Raises: ConfigError."""
    text = _str(file, keypath, value)
    if not text or len(text) > MAX_NODE_ID_LEN or not _NODE_ID_RE.fullmatch(text) or text in (".", ".."):
        raise ConfigError(file, keypath, f"must be 1-{MAX_NODE_ID_LEN} letters, digits, '_', '.' or '-' "
                          f"(not . or ..), as `wiber keygen NAME` takes it; got {_short(text)}")
    return text


def _patterns(file: str, keypath: str, raw: object) -> tuple[str, ...]:
    """Returns: the topic patterns at `keypath` (null or absent: none). Raises: ConfigError."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        hint = f" (write [{_short(raw)}])" if isinstance(raw, str) else ""
        raise ConfigError(file, keypath, f"must be a list of topic patterns like [\"orders.>\"], got "
                          f"{_describe(raw)}{hint}")
    out: list[str] = []
    for index, pattern in enumerate(raw):
        if not isinstance(pattern, str):
            raise ConfigError(file, f"{keypath}[{index}]", f"a topic pattern must be a string, got "
                              f"{_describe(pattern)}; quote it")
        problem = pattern_problem(pattern)
        if problem is not None:
            raise ConfigError(file, f"{keypath}[{index}]", f"{problem}, got {_short(pattern)}")
        out.append(pattern)
    return tuple(out)
