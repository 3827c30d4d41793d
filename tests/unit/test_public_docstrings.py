"""Every public name of the client side says what it is: the package's exports, the asyncio
client's and the pytest plugin's, and every public method and property of their classes."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Iterator

import wiber
import wiber.aio
import wiber.client
import wiber.publisher
import wiber.pytest_plugin

MODULES: tuple[ModuleType, ...] = (wiber, wiber.aio, wiber.client, wiber.publisher, wiber.pytest_plugin)


def public_names() -> Iterator[tuple[str, Any]]:
    """Yields: (dotted name, object) of every exported name, and of the public members of exported classes."""
    for module in MODULES:
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            if getattr(obj, "__module__", "").split(".")[0] != "wiber":
                continue  # imported from elsewhere (typing, pytest)
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for member_name, member in vars(obj).items():
                    if member_name.startswith("_") and member_name not in ("__init__", "__call__"):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if isinstance(member, property) or inspect.isfunction(member):
                        if member_name == "__init__" and obj.__doc__:
                            continue  # the class docstring says how to make one
                        yield f"{module.__name__}.{name}.{member_name}", member


def test_every_public_name_has_a_docstring() -> None:
    missing = sorted({dotted for dotted, obj in public_names() if not (inspect.getdoc(obj) or "").strip()})
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_the_walk_sees_the_clients() -> None:
    seen = {dotted for dotted, _ in public_names()}
    assert {"wiber.Client.publish", "wiber.aio.Client.publish", "wiber.publisher.Publisher.publish",
            "wiber.Consumer.fetch"} <= seen
