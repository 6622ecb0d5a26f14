"""cluster-hooks' settings from its TOML file ([hooks] of docs/configuration.md) and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, parse_config
from cluster.hooks.main import _parser, settings_from
from cluster.hooks.runner import HooksSettings

DOCUMENTED = """
[hooks]
directory = "/etc/ipsec-cluster/hooks.d"
webhooks = ["https://hooks.example.net/ipsec"]
timeout_s = 10
retries = 3
queue_size = 1000
state_file = "/var/lib/ipsec-cluster/hooks.revision"
"""


def test_the_documented_section() -> None:
    settings = settings_from(parse_config(DOCUMENTED, "cluster-hooks.toml"))
    assert settings == HooksSettings(
        directory=Path("/etc/ipsec-cluster/hooks.d"),
        webhooks=["https://hooks.example.net/ipsec"], timeout_s=10.0, retries=3,
        backoff_s=1.0, queue_size=1000,
        state_file=Path("/var/lib/ipsec-cluster/hooks.revision"))


def test_flags_override_the_file() -> None:
    args = _parser().parse_args(["--directory", "/srv/hooks", "--webhook", "http://a/",
                                 "--webhook", "http://b/", "--retries", "0",
                                 "--state-file", "/srv/rev"])
    settings = settings_from(parse_config(DOCUMENTED, "f"), args)
    assert settings.directory == Path("/srv/hooks")
    assert settings.webhooks == ["http://a/", "http://b/"]
    assert settings.retries == 0
    assert settings.state_file == Path("/srv/rev")
    assert settings.timeout_s == 10.0


@pytest.mark.parametrize("line", ["timeout_s = 0", "retries = -1", "queue_size = 0",
                                  "backoff_s = -1"])
def test_out_of_range_is_a_config_error(line: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster-hooks\.toml: \[hooks\]"):
        settings_from(parse_config(f"[hooks]\ndirectory = \"/d\"\n{line}\n",
                                   "cluster-hooks.toml"))


def test_nothing_to_deliver_to_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a directory or webhooks"):
        settings_from(parse_config("[hooks]\nwebhooks = []\n", "f"))


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        settings_from(parse_config("[hooks]\ndirectory = \"/d\"\nretries = \"three\"\n", "f"))
