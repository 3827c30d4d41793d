"""`wiber keygen NAME [--dir DIR] [--force]`: a CURVE key pair in zmq.auth's zcert files (docs/design.md section 10).

`DIR/NAME.key` holds the public key (hand it to whoever must know this node or client);
`DIR/NAME.key_secret` holds both keys and is readable by its owner only (0600). Both are written
by `zmq.auth.create_certificates` in a private (0700) directory beside them, then moved into place:
the secret is never readable by anyone else, not even for a moment, and an interrupted run leaves
no half-written key under the real names. Existing keys are kept unless `--force`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile

from wiber.cli.common import Subcommands, UsageError, fail
from wiber.client.curve import PUBLIC_SUFFIX, SECRET_SUFFIX

#: A key's name: a node id or a client name of the config, so the same rule as node ids.
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class KeysExist(UsageError):
    """A key of that name is already in the directory, and --force was not given."""


def register(sub: Subcommands) -> None:
    """Add `keygen` to the `wiber` parser."""
    p = sub.add_parser(
        "keygen", help="write a CURVE key pair (NAME.key, NAME.key_secret) for a node or a client",
        description=(
            "Write a CURVE key pair as zmq.auth writes it: DIR/NAME.key holds the public key,\n"
            "DIR/NAME.key_secret both keys, readable by its owner only (mode 0600). A node\n"
            "uses keys_dir/<node id>.key_secret; a client NAME listed under security.clients\n"
            "gives its NAME.key_secret to --key (or WIBER_KEY), and the cluster's keys_dir\n"
            "holds its NAME.key. Existing keys are kept unless --force."
        ),
        epilog=("examples:\n"
                "  for n in n1 n2 n3; do wiber keygen $n --dir keys; done\n"
                "  wiber keygen app --dir keys\n"
                "  WIBER_KEY=keys/app.key_secret wiber pub orders.new 'order 17'\n"
                "\n"
                "exit status: 0 written; 1 the files could not be written; 2 bad NAME, or keys exist "
                "without --force."),
    )
    p.add_argument("name", metavar="NAME", help="node id or client name (letters, digits, _ . -; at most 64)")
    p.add_argument("--dir", default=".", metavar="DIR", help="directory to write into, made 0700 if missing "
                                                             "(default: the current directory)")
    p.add_argument("--force", action="store_true", help="replace a key pair of that name")
    p.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write NAME.key and NAME.key_secret into --dir; print both paths."""
    try:
        public, secret = write_key_pair(args.dir, args.name, force=args.force)
    except OSError as exc:
        return fail(f"cannot write the keys of {args.name!r} into {args.dir}: {exc}", 1)
    print(f"public key: {public}")
    print(f"secret key: {secret} (mode 0600: keep it private)")
    return 0


def write_key_pair(directory: str, name: str, force: bool = False) -> tuple[str, str]:
    """Write a new key pair `directory/name.key` and `directory/name.key_secret` (0600).

    Returns: (public path, secret path).

    Raises:
        UsageError: `name` is not a valid key name.
        KeysExist: a file of either name exists and `force` is false.
        OSError: the directory or the files cannot be written.
    """
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"bad key name {name!r}: use 1-64 letters, digits, '_', '.' or '-' (a node id or "
                         f"client name)")
    public = os.path.join(directory, name + PUBLIC_SUFFIX)
    secret = os.path.join(directory, name + SECRET_SUFFIX)
    _refuse_existing(public, secret, force)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".keygen-{name}-", dir=directory)  # 0700: private from birth
    try:
        made_public, made_secret = _create_certificates(staging, name)
        os.chmod(made_secret, SECRET_MODE)
        os.chmod(made_public, PUBLIC_MODE)
        for made in (made_secret, made_public):
            _fsync(made)
        if force:
            os.replace(made_secret, secret)
            os.replace(made_public, public)
        else:
            _link_new(made_secret, secret)
            try:
                _link_new(made_public, public)
            except BaseException:
                os.unlink(secret)  # the pair goes in whole or not at all
                raise
        _fsync(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def _create_certificates(directory: str, name: str) -> tuple[str, str]:
    """Returns: the (public, secret) paths zmq.auth wrote a new key pair to."""
    import zmq.auth  # imported here: `wiber --help` does not need it

    made_public, made_secret = zmq.auth.create_certificates(directory, name)
    return str(made_public), str(made_secret)


def _refuse_existing(public: str, secret: str, force: bool) -> None:
    """Raises: KeysExist when either file exists and `force` is false."""
    existing = [p for p in (public, secret) if os.path.lexists(p)]
    if existing and not force:
        raise KeysExist(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: keeping "
                        f"{'it' if len(existing) == 1 else 'them'} (give --force to replace the key pair)")


def _link_new(made: str, path: str) -> None:
    """Give `made` the name `path`, which must not exist yet (a hard link: no overwrite, no window)."""
    try:
        os.link(made, path)
    except FileExistsError:
        raise KeysExist(f"{path} already exists: keeping it (give --force to replace the key pair)") from None


def _fsync(path: str) -> None:
    """Flush a file's or a directory's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
