"""`python -m cluster.store.rotate --config FILE [--check]`: re-seal under the current data key.

Step 3 of docs/operator-guide.md, "Rotating the cluster data key": every daemon holds the
new key as current and the old one as retired; this rewrites every IKE SA and Child SA value
still sealed under another key, so the retired key can then be removed. `--check` only
counts values per key id. Reads [cluster] and [etcd] of a daemon's configuration (keyd's has
the write access). Exit 0: nothing is left under another key; 1: something is (listed), or
the store / key / configuration failed (one line, no traceback); 2: bad usage.
"""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load_config

from .client import Store
from .errors import StoreError
from .keyspace import BadKey
from .seal import DataKeyError, load_data_key


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.store.rotate",
                                description="Re-seal key material under the current data key.")
    p.add_argument("--config", required=True, help="a daemon's TOML configuration (keyd's)")
    p.add_argument("--check", action="store_true",
                   help="only count stored values per data key id; write nothing")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        data_key = load_data_key(config.cluster.data_key_file)
        with Store.from_config(config, data_key) as store:
            counts = store.sealed_key_ids()
            for key_id, n in sorted(counts.items()):
                role = ("current" if key_id == data_key.key_id else
                        "retired" if key_id in data_key.retired_ids else "not in the ring")
                print(f"{key_id}  {n:8d}  {role}")
            if args.check:
                return 0 if set(counts) <= {data_key.key_id} else 1
            report = store.reseal()
    except (ConfigError, DataKeyError, StoreError, BadKey) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"re-sealed {report.resealed}, already current {report.current}, "
          f"left {len(report.failed)}")
    for key, reason in sorted(report.failed.items()):
        print(f"  {key}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(run())
