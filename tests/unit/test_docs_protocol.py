"""The operator and protocol docs keep up with the code (issue 18).

docs/protocol.md must give every op the node dispatches a section of its own and name every wire
error code, consumer-error reason, PING and STATUS field; docs/operations.md must list every
configuration key in its "Configuration keys" section; the README must link both. Each check reads
the code's own tables (the protocol's op set, the node's handler table, `WIRE_ERRORS`, the config
dataclasses), so a new op, code or key fails here until it is documented.
"""

from __future__ import annotations

import ast
import dataclasses
import re

from tests.conftest import REPO
from wiber import protocol
from wiber.config import ClientRights, ClusterConfig, NodeConfig, RetentionConfig, SecurityConfig
from wiber.errors import CONSUMER_ERRORS, WIRE_ERRORS

DOCS = REPO / "docs"
PROTOCOL = (DOCS / "protocol.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()
CLIENTS_SOURCE = REPO / "wiber" / "node" / "clients.py"

#: Dataclass fields that are not keys of the YAML file.
NOT_KEYS = frozenset({"metrics_port_defaulted"})

#: A class of the source and the ops of its dispatch table.
ClassDefAndTable = tuple[ast.ClassDef, set[str]]


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    """Returns: the class `name` defined at the top of `tree`."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"{CLIENTS_SOURCE}: no class {name}")


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    """Returns: the method `name` of `cls`."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{CLIENTS_SOURCE}: no method {cls.name}.{name}")


def _str_keys(node: ast.AST) -> set[str]:
    """Returns: every str constant used as a key of a dict literal anywhere inside `node`."""
    return {key.value for sub in ast.walk(node) if isinstance(sub, ast.Dict)
            for key in sub.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}


def _handlers() -> ClassDefAndTable:
    """Returns: the node's client handler class and the ops of its dispatch table (`self.handlers`)."""
    tree = ast.parse(CLIENTS_SOURCE.read_text())
    cls = _class(tree, "ClientHandlers")
    for node in ast.walk(_method(cls, "__init__")):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "handlers" for t in targets):
                return cls, {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError(f"{CLIENTS_SOURCE}: no self.handlers table in ClientHandlers.__init__")


def _op_headings(text: str) -> set[str]:
    """Returns: the ops that have a heading of their own, ``### `OP` ``."""
    return set(re.findall(r"^#{2,4} `([A-Z_]+)`\s*$", text, flags=re.MULTILINE))


def _section(text: str, heading: str) -> str:
    """Returns: the body of the ``## heading`` section of a Markdown text, up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"no '## {heading}' section"
    return match.group(1)


def _missing(names: set[str], text: str, form: str = "`{}`") -> list[str]:
    """Returns: the names that do not appear in `text` written as `form` (inline code by default), sorted."""
    return sorted(name for name in names if form.format(name) not in text)


#: How a table row names its subject: first cell, inline code.
ROW = "| `{}` |"


def test_the_handler_table_and_the_protocol_agree_on_the_ops() -> None:
    _, dispatched = _handlers()
    assert dispatched == set(protocol.OPS)


def test_every_op_has_a_section_in_protocol_md() -> None:
    _, dispatched = _handlers()
    missing = sorted((dispatched | set(protocol.OPS)) - _op_headings(PROTOCOL))
    assert not missing, f"docs/protocol.md has no '### `OP`' section for {missing}"


def test_protocol_md_has_no_section_for_an_op_that_does_not_exist() -> None:
    extra = sorted(_op_headings(PROTOCOL) - set(protocol.OPS))
    assert not extra, f"docs/protocol.md documents ops the node does not know: {extra}"


def test_every_wire_error_code_and_consumer_reason_is_in_protocol_md() -> None:
    errors = _section(PROTOCOL, "Errors")
    for names in (set(WIRE_ERRORS), set(CONSUMER_ERRORS)):
        missing = _missing(names, errors, ROW)
        assert not missing, f"docs/protocol.md, Errors, has no table row for {missing}"


def test_every_ping_and_status_field_is_in_protocol_md() -> None:
    """The fields are read from the dict literals ``on_ping`` and ``on_status`` return (nested ones too)."""
    cls, _ = _handlers()
    for op, method in (("PING", "on_ping"), ("STATUS", "on_status")):
        fields = _str_keys(_method(cls, method))
        section = _section(PROTOCOL, "Ops").split(f"### `{op}`", 1)[1].split("\n### ", 1)[0]
        missing = _missing(fields, section)
        assert fields and not missing, f"docs/protocol.md, {op}, does not name the reply fields {missing}"


def test_every_config_key_is_in_operations_md() -> None:
    keys = {f.name for cls in (ClusterConfig, NodeConfig, RetentionConfig, SecurityConfig, ClientRights)
            for f in dataclasses.fields(cls)} - NOT_KEYS
    missing = _missing(keys, _section(OPERATIONS, "Configuration keys"), ROW)
    assert not missing, f"docs/operations.md, Configuration keys, has no table row for {missing}"


def test_operations_md_has_the_sections_the_code_points_to() -> None:
    for heading in ("Configuration keys", "Data layout", "Recovery", "Open files"):
        assert _section(OPERATIONS, heading).strip(), heading


def test_the_readme_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    for name in ("protocol.md", "operations.md"):
        assert f"](docs/{name})" in readme, f"README.md does not link docs/{name}"
