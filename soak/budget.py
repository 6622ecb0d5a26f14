"""Every count and time limit of the soak, in one place. `make soak` must finish within 30
minutes on 2 cores; `python -m soak --quick` divides the counts (a smoke run of the machinery:
its figures are not the reliability figures)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Budget:
    fuzz_inputs: int = 1_000_000  # per decoder (issue 15: at least 10**6)
    fuzz_max_s: int = 240  # per decoder process: a wall-clock cap
    fuzz_parallel: int = 2  # fuzzer processes at once (one per core)
    # decoders fuzzed as several processes on one corpus, each its share of fuzz_inputs
    fuzz_shards: tuple[tuple[str, int], ...] = (("ike", 2),)
    fuzz_split_max_s: int = 420  # the cap of each process of a split decoder
    fuzz_total_s: int = 720  # the whole study: no process runs past it (6 x 240 s / 2 cores)
    confinement_timeout_s: float = 5.0  # per etcd request of the confinement study
    lab_nodes: int = 3  # cluster-node agents of the shared lab (soak/session.py)
    lab_clients: int = 20  # initiator clients pinging the protected server (issue 15: 20)
    lab_etcd_members: int = 3  # the shared lab's etcd cluster (a crash cycle kills one member)
    crash_cycles: int = 100  # SIGKILL + restart cycles (issue 15: 100)
    crash_cycles_max_s: float = 480.0  # a wall-clock cap on them
    crash_cycle_timeout_s: float = 20.0  # a cycle waits this long for every client's answer
    partition_watch_s: float = 20.0  # after the cut: how long fencing and recovery are watched
    etcd_gone_s: float = 60.0  # etcd stopped this long (issue 15: 60 s)
    etcd_return_s: float = 60.0  # after etcd returns: how long a new client is retried
    flood_s: float = 60.0  # the IKE_SA_INIT flood (issue 15: 60 s)
    flood_esp_s: float = 20.0  # the ESP flood at the nodes
    flood_max_pps: int = 20_000  # a cap on either flood (one sender; the machine is shared)
    flood_clients: int = 20  # legitimate clients connecting before and during the flood

    def quick(self) -> Budget:
        return replace(self, fuzz_inputs=20_000, fuzz_max_s=60, fuzz_split_max_s=60,
                       fuzz_total_s=300, lab_nodes=2, lab_clients=3,
                       crash_cycles=5, partition_watch_s=12.0, etcd_gone_s=15.0,
                       etcd_return_s=30.0, flood_s=10.0, flood_esp_s=5.0, flood_clients=3)


BUDGET = Budget()
