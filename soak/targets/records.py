"""The etcd record decoders (cluster/store/records.py): every record kind, its versioned JSON,
the sealed key material opened under a known data key, and the public view (no data key).

An input is `kind byte | mode byte | rest`. The kind byte picks the record type. Mode 0: `rest`
is the etcd value as read. Mode 1: the same, decoded with a PublicView (as clusterctl reads
without the data key). Mode 2: `rest` is the plaintext of the sealed secrets, sealed here into a
valid record of that kind under the known data key, so the fuzzer reaches the secret fields.
"""

from __future__ import annotations

import json

from soak import decoders as d

TITLE = "etcd records: every kind, sealed fields under a known data key, public view"
TYPED: tuple[type[BaseException], ...] = (d.MalformedRecord, d.WrongDataKey)

DATA_KEY = d.DataKey(bytes(range(32)), "soak")
PUBLIC = d.PublicView()
_IKE = "0102030405060708" + "1112131415161718"


def _records() -> list[tuple[d.Record, str]]:
    key = bytes(range(16))
    return [
        (d.NodeRecord("n1", "10.0.1.1", 100, "ready", 4501, "0.1.0", 1e9), "nodes/n1"),
        (d.KeydRecord("k1", "10.0.0.2", "0.1.0", 1e9), "keyd/k1"),
        (d.IkeSaRecord(_IKE, 0x0102030405060708, 0x1112131415161718, "192.0.2.10", 4500,
                       4500, "client@example.net", "10.99.0.1", [0xC0010001], "k1", 1e9,
                       b'{"keys": "00"}'), f"ike/{_IKE}"),
        (d.ChildSaRecord(0xC0010001, 0x01020304, _IKE, "aes128gcm16", None, True, key + b"salt",
                         b"", key + b"tlas", b"", ["10.20.0.0/16"], ["10.99.0.1/32"],
                         "192.0.2.10", 4500, True, "10.99.0.1", "client@example.net", 1e9,
                         3000, 3600, None, "staff", "split", ["10.20.0.0/16 tcp/443"],
                         ["10.20.9.0/24"]), "sa/c0010001"),
        (d.Assignment(_IKE, "n1", 7, "handoff", "n2", 1e9), f"assign/{_IKE}"),
        (d.SeqRecord(0xC0010001, "n1", 7, 1 << 33, 5000, (1 << 64) - 1, "final", 1e9),
         "seq/c0010001"),
        (d.PoolLease("10.99.0.1", _IKE, "client@example.net", "k1", 1e9), "pool/10.99.0.1"),
        (d.Policy("staff", ["*@example.net"], "split", ["10.20.0.0/16", "udp/53"],
                  ["10.20.9.0/24"]), "policy/staff"),
    ]


RECORDS = _records()


def seeds() -> list[bytes]:
    out = []
    for i, (record, key) in enumerate(RECORDS):
        raw = d.encode_record(record, key, DATA_KEY)
        out += [bytes((i, 0)) + raw, bytes((i, 1)) + raw]
        if type(record).SECRET_FIELDS:
            secrets = {n: getattr(record, n).hex() for n in type(record).SECRET_FIELDS}
            out.append(bytes((i, 2)) + json.dumps(secrets).encode())
    return out


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    record, key = RECORDS[data[0] % len(RECORDS)]
    cls = type(record)
    mode = data[1] % 3
    if mode == 2:
        body = json.loads(d.encode_record(record, key, DATA_KEY))
        body["sealed"] = DATA_KEY.seal(data[2:], key)
        d.decode_record(cls, json.dumps(body).encode(), key, DATA_KEY)
    else:
        d.decode_record(cls, data[2:], key, PUBLIC if mode else DATA_KEY)
