"""Key files on the client side (docs/design.md section 10): `wiber keygen` writes what zmq.auth reads, the
secret readable by its owner only; a client's key file that cannot be used is refused naming its path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from wiber import cli
from wiber.cli.keygen import KeysExist, write_key_pair
from wiber.client.curve import KEY_ENV, CurveError, KeyFileError, config_curve_keys, curve_keys, load_key_pair
from wiber.config import ClusterConfig, Config, NodeConfig, SecurityConfig


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keygen_writes_a_pair_zmq_auth_loads_with_the_secret_0600(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    public, secret = write_key_pair(str(keys_dir), "app")
    assert (public, secret) == (str(keys_dir / "app.key"), str(keys_dir / "app.key_secret"))
    pub_only, none = zmq.auth.load_certificate(public)
    pub_again, secret_key = zmq.auth.load_certificate(secret)
    assert none is None and pub_only == pub_again and secret_key is not None
    assert zmq.curve_public(secret_key) == pub_only  # the two files hold one key pair
    assert mode(secret) == 0o600 and mode(public) == 0o644 and mode(keys_dir) == 0o700
    assert sorted(os.listdir(keys_dir)) == ["app.key", "app.key_secret"]  # no staging left behind
    assert load_key_pair(secret) == (pub_only, secret_key)


def test_keygen_keeps_existing_keys_unless_forced(tmp_path: Path) -> None:
    public, secret = write_key_pair(str(tmp_path), "n1")
    before = (Path(public).read_bytes(), Path(secret).read_bytes())
    with pytest.raises(KeysExist, match="--force"):
        write_key_pair(str(tmp_path), "n1")
    assert (Path(public).read_bytes(), Path(secret).read_bytes()) == before
    os.unlink(public)  # half a pair left: still kept
    with pytest.raises(KeysExist, match="n1.key_secret already exists"):
        write_key_pair(str(tmp_path), "n1")
    assert not os.path.exists(public)
    write_key_pair(str(tmp_path), "n1", force=True)
    assert Path(secret).read_bytes() != before[1] and mode(secret) == 0o600
    assert zmq.curve_public(load_key_pair(secret)[1]) == zmq.auth.load_certificate(public)[0]


def test_keygen_command_help_example_exit_status_and_bad_names(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["keygen", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "wiber keygen app --dir keys" in text and "--force" in text

    assert cli.main(["keygen", "ops", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"public key: {tmp_path / 'ops.key'}" in out and "ops.key_secret (mode 0600" in out
    assert cli.main(["keygen", "ops", "--dir", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert cli.main(["keygen", "ops", "--dir", str(tmp_path), "--force"]) == 0
    for bad in ("../escape", ".", "a/b", "x" * 65, ""):
        assert cli.main(["keygen", bad, "--dir", str(tmp_path)]) == 2
        assert "bad key name" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["ops.key", "ops.key_secret"]


def test_a_key_file_that_cannot_be_used_is_refused_naming_its_path(tmp_path: Path) -> None:
    public, secret = write_key_pair(str(tmp_path), "app")
    missing = tmp_path / "nobody.key_secret"
    with pytest.raises(KeyFileError, match=f"{missing}: no such file .*wiber keygen") as refused:
        load_key_pair(missing)
    assert refused.value.path == str(missing)
    with pytest.raises(KeyFileError, match=f"{public}: holds no secret key: give the .key_secret file"):
        load_key_pair(public)
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("hello\n")
    with pytest.raises(KeyFileError, match=f"{garbage}: holds no public-key line"):
        load_key_pair(garbage)
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    with pytest.raises(KeyFileError, match=f"{short}: its public key is not a CURVE key"):
        load_key_pair(short)
    with pytest.raises(KeyFileError, match=f"{tmp_path}: cannot be read"):
        load_key_pair(tmp_path)  # a directory


def _config(tmp_path: Path, security: SecurityConfig | None) -> Config:
    nodes = tuple(NodeConfig(f"n{i}", "127.0.0.1", 9100 + i, 9200 + i, 9300 + i) for i in (1, 2))
    return Config(str(tmp_path / "cluster.yaml"), ClusterConfig(), nodes, security)


def test_keys_from_a_config_map_each_nodes_client_and_pub_address(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    keys_dir = tmp_path / "keys"
    for name in ("n1", "n2", "app"):
        write_key_pair(str(keys_dir), name)
    config = _config(tmp_path, SecurityConfig(str(keys_dir)))
    curve = config_curve_keys(config, str(keys_dir / "app.key_secret"))
    assert curve is not None
    n1, n2 = (zmq.auth.load_certificate(str(keys_dir / f"{n}.key"))[0] for n in ("n1", "n2"))
    assert curve.servers == {"tcp://127.0.0.1:9101": n1, "tcp://127.0.0.1:9301": n1,
                             "tcp://127.0.0.1:9102": n2, "tcp://127.0.0.1:9302": n2}
    assert curve.server_key("127.0.0.1:9102") == n2  # addresses are compared normalized
    assert curve.server_key("tcp://10.0.0.1:1", node_address="tcp://127.0.0.1:9101") == n1

    with pytest.raises(CurveError, match=f"no client key was given: pass client_key, or set {KEY_ENV}"):
        config_curve_keys(config, None)
    monkeypatch.setenv(KEY_ENV, str(keys_dir / "app.key_secret"))
    assert config_curve_keys(config, None) == curve
    os.unlink(keys_dir / "n2.key")
    with pytest.raises(KeyFileError, match=f"{keys_dir / 'n2.key'}: no such file"):
        config_curve_keys(config, None)

    plain = _config(tmp_path, None)
    assert config_curve_keys(plain, None) is None  # WIBER_KEY is set, but the cluster is plain
    with pytest.raises(CurveError, match="no security section"):
        config_curve_keys(plain, str(keys_dir / "app.key_secret"))


def test_keys_given_as_a_pair_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    public, secret = zmq.curve_keypair()
    assert curve_keys(None, None) is None
    curve = curve_keys((public, secret), {"127.0.0.1:1": public})
    assert curve is not None and curve.servers == {"tcp://127.0.0.1:1": public}
    with pytest.raises(KeyFileError, match="secret key is not a CURVE key"):
        curve_keys((public, b"short"), {"127.0.0.1:1": public})
    for bad in (b"~" * 40, public[:39]):  # not Z85; too short
        with pytest.raises(KeyFileError, match="server key of 127.0.0.1:1"):
            curve_keys((public, secret), {"127.0.0.1:1": bad})
