"""The public API is exactly what `wiber.__all__` says (httpx's test_exported_members)."""

from __future__ import annotations

import types

import wiber


def test_public_names_are_pinned() -> None:
    # Submodules become package attributes once anything imports them: they are not the API.
    public = {
        name for name in dir(wiber)
        if not name.startswith("_") and not isinstance(getattr(wiber, name), types.ModuleType)
    } - {"annotations"}
    assert public == set(wiber.__all__) - {"__version__"}
    for name in wiber.__all__:
        assert getattr(wiber, name) is not None


def test_wire_errors_share_one_root() -> None:
    for name in ("BadRequest", "TooLarge", "UnknownOp", "NotLeader", "Unavailable", "StorageError",
                 "SessionExpired", "Forbidden"):
        cls = getattr(wiber, name)
        assert issubclass(cls, wiber.WireError) and issubclass(cls, wiber.WiberError)
    # A key problem is the client's, found before anything is sent: not a wire error.
    assert issubclass(wiber.KeyFileError, wiber.CurveError) and issubclass(wiber.CurveError, wiber.WiberError)
    assert not issubclass(wiber.CurveError, wiber.WireError)
