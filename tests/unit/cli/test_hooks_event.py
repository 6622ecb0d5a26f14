"""What a hook sees: environment variables and the JSON document."""

from __future__ import annotations

import json

from cluster.hooks.event import EVENT_TYPES, HookEvent, format_peer, split_peer


def test_env_has_every_variable_always() -> None:
    env = HookEvent("node-up", 12, "prod", node="n1", node_address="10.30.0.11").env()
    for name in ("HOOK_EVENT", "HOOK_REVISION", "HOOK_CLUSTER", "HOOK_CLIENT_ID",
                 "HOOK_IKE_SA_ID", "HOOK_VIRTUAL_IP", "HOOK_PEER", "HOOK_PEER_ADDR",
                 "HOOK_PEER_PORT", "HOOK_NODE", "HOOK_OLD_NODE", "HOOK_NODE_ADDRESS",
                 "HOOK_EPOCH", "HOOK_SPI_IN", "HOOK_SPI_OUT", "HOOK_OLD_SPI_IN"):
        assert name in env
    assert (env["HOOK_EVENT"], env["HOOK_REVISION"], env["HOOK_NODE"]) == ("node-up", "12",
                                                                          "n1")
    assert env["HOOK_CLIENT_ID"] == "" and env["HOOK_SPI_IN"] == ""


def test_json_and_env_agree_and_spis_are_hex() -> None:
    e = HookEvent("sa-rekeyed", 40, "c", client_id="bob", peer="[2001:db8::1]:4500",
                  spi_in=0xC0000002, spi_out=0x1, old_spi_in=0xC0000001)
    doc = json.loads(e.body())
    assert doc["schema"] == 1 and doc["event"] == "sa-rekeyed"
    assert (doc["spi_in"], doc["spi_out"], doc["old_spi_in"]) == ("c0000002", "00000001",
                                                                  "c0000001")
    env = e.env()
    assert env["HOOK_SPI_OUT"] == "00000001"
    assert (env["HOOK_PEER_ADDR"], env["HOOK_PEER_PORT"]) == ("2001:db8::1", "4500")


def test_peer_formats() -> None:
    assert format_peer("198.51.100.1", 4500) == "198.51.100.1:4500"
    assert format_peer("2001:db8::1", 500) == "[2001:db8::1]:500"
    assert format_peer(None, 500) is None
    assert split_peer("198.51.100.1:4500") == ("198.51.100.1", "4500")
    assert split_peer("2001:db8::1") == ("2001:db8::1", "")
    assert split_peer(None) == ("", "")


def test_event_names() -> None:
    assert set(EVENT_TYPES) == {"client-up", "client-down", "client-moved", "sa-rekeyed",
                                "node-up", "node-down", "node-draining"}
