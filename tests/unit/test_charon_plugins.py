"""The bootstrap's check that every charon plugin the project loads is on the machine, against a
plugin directory made for the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.lab import plugins
from cluster.lab.strongswan import PLUGINS


def fake_dir(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    for n in names:
        (d / f"libstrongswan-{n}.so").write_bytes(b"\x7fELF")
    return d


def test_a_complete_directory_passes(tmp_path: Path) -> None:
    d = fake_dir(tmp_path, PLUGINS.split())
    assert plugins.missing(PLUGINS.split(), d) == []
    assert plugins.main([str(d)]) == 0


def test_a_missing_plugin_is_named_with_its_package(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    d = fake_dir(tmp_path, [p for p in PLUGINS.split() if p not in ("gcm", "openssl")])
    gone = plugins.missing(PLUGINS.split(), d)
    assert [(m.plugin, m.package) for m in gone] == [
        ("openssl", "libstrongswan-standard-plugins"), ("gcm", "libstrongswan-standard-plugins")]
    assert plugins.main([str(d)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"bootstrap: charon plugin 'openssl' is missing ({d}/libstrongswan-openssl.so): "
        "install the Debian package libstrongswan-standard-plugins",
        f"bootstrap: charon plugin 'gcm' is missing ({d}/libstrongswan-gcm.so): "
        "install the Debian package libstrongswan-standard-plugins",
    ]


def test_a_plugin_the_table_does_not_know_still_fails_clearly(tmp_path: Path) -> None:
    gone = plugins.missing(["nonce", "made-up"], fake_dir(tmp_path, ["nonce"]))
    assert [m.plugin for m in gone] == ["made-up"]
    assert "no Debian package is known" in gone[0].line()


def test_every_loaded_plugin_has_a_package() -> None:
    assert [p for p in plugins.loaded_plugins() if p not in plugins.PACKAGES] == []


def test_the_module_runs_as_the_bootstrap_runs_it(tmp_path: Path) -> None:
    d = fake_dir(tmp_path, [p for p in PLUGINS.split() if p != "kernel-libipsec"])
    r = subprocess.run([sys.executable, "-m", "cluster.lab.plugins", str(d)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "'kernel-libipsec' is missing" in r.stderr
    assert "libcharon-extra-plugins" in r.stderr
    assert "Traceback" not in r.stderr
