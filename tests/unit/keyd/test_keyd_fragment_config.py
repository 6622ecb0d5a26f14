"""The [keyd] fragment_* keys (docs/configuration.md) reach the IKE core, and bad values are
refused with a clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.config import ConfigError, load_config
from keyd.credentials import responder_config

HEAD = '[keyd]\nidentity = "gw"\npsk_file = "{psk}"\n'


def _load(tmp_path: Path, extra: str) -> object:
    psk = tmp_path / "psk"
    psk.write_text("a shared secret of some length\n")
    psk.chmod(0o600)
    path = tmp_path / "keyd.toml"
    path.write_text(HEAD.format(psk=psk) + extra)
    return load_config(path)


def test_fragment_keys_reach_the_responder(tmp_path: Path) -> None:
    config = _load(tmp_path, "fragment_mtu = 576\nfragment_max_incomplete = 16\n"
                             "fragment_timeout_s = 3\n")
    rc = responder_config(config)  # type: ignore[arg-type]
    assert rc.fragmentation and rc.fragment_mtu == 576
    assert rc.fragment_limits.max_incomplete == 16 and rc.fragment_limits.timeout_s == 3.0
    assert rc.fragment_limits.memory_bound_bytes == 16 * 65535
    off = responder_config(_load(tmp_path, "fragmentation = false\n"))  # type: ignore[arg-type]
    assert not off.fragmentation


@pytest.mark.parametrize("extra,message", [
    ("fragment_mtu = 500\n", "keyd.fragment_mtu must be 576..65535, not 500"),
    ("fragment_max_incomplete = 0\n", "keyd.fragment_* limits must be positive"),
    ("fragment_timeout_s = 0\n", "keyd.fragment_* limits must be positive"),
    ("fragmentation = 1\n", "keyd.fragmentation must be true or false"),
])
def test_bad_fragment_keys_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace(".", r"\.")):
        _load(tmp_path, extra)
