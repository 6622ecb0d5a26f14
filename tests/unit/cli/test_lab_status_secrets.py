"""`clusterctl lab status` shows where the lab's secrets are, never their bytes.

It printed the lab PSK in `-o json` (the soak's secrets study found it). Here a lab's state and
PKI are written to a temporary lab root (no namespaces: `status` only reads them), and both
output formats are searched for every secret the lab holds, in every encoding the secrets study
tries (soak/secrets.py).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli.main import cli
from cluster.lab.pki import LabPki
from cluster.lab.state import ROOT_ENV, LabState
from soak.secrets import search

NAME = "secrets-test"


@pytest.fixture
def lab_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    directory = tmp_path / NAME
    directory.mkdir()
    LabState(name=NAME, prefix=f"ipsc-{NAME}_abcd-", directory=str(directory),
             gateway="cluster", nodes=1, keyd=1, ready=True).save()
    LabPki(directory / "pki").create()
    return directory


def _lab_secrets(pki: LabPki) -> dict[str, bytes]:
    doc = tomllib.loads(pki.secrets_file.read_text())
    out = {"lab PSK": pki.psk().encode(),
           "data key": bytes.fromhex(pki.data_key_file.read_text().strip()),
           "data key (hex text)": pki.data_key_file.read_text().strip().encode()}
    out |= {f"PSK of {e['id']}": str(e["secret"]).encode() for e in doc["psk"]}
    out |= {f"EAP password of {e['id']}": str(e["password"]).encode() for e in doc["eap"]}
    return out


@pytest.mark.parametrize("output", ["json", "table"])
def test_lab_status_prints_no_secret(lab_root: Path, output: str) -> None:
    pki = LabPki(lab_root / "pki")
    # wide enough that rich keeps each path on one line
    r = CliRunner(env={"COLUMNS": "300"}).invoke(
        cli, ["lab", "status", "--name", NAME, "-o", output])
    assert r.exit_code == 0, r.output
    printed = r.stdout_bytes + r.stderr_bytes
    summary, hits = search({"lab status": [(output, printed)]}, _lab_secrets(pki))
    assert summary["lab status"]["bytes"] > 0
    assert hits == []
    # where the PSK is, and a fingerprint that tells two PSKs apart
    assert str(pki.psk_file).encode() in printed
    assert pki.psk_fingerprint().encode() in printed


def test_lab_status_json_names_the_psk_file_and_fingerprint(lab_root: Path) -> None:
    r = CliRunner().invoke(cli, ["lab", "status", "--name", NAME, "-o", "json"])
    st = json.loads(r.stdout)
    assert "psk" not in st
    pki = LabPki(lab_root / "pki")
    assert st["psk_file"] == str(pki.psk_file)
    assert st["psk_fingerprint"].startswith("sha256:") and len(st["psk_fingerprint"]) == 23
    # another PSK, another fingerprint
    pki.psk_file.write_text("another psk of the same kind\n")
    again = json.loads(CliRunner().invoke(
        cli, ["lab", "status", "--name", NAME, "-o", "json"]).stdout)
    assert again["psk_fingerprint"] != st["psk_fingerprint"]
