"""Every count and time limit of the soak, in one place. `make soak` must finish within 30
minutes on 2 cores; `python -m soak --quick` divides the counts (a smoke run of the machinery:
its figures are not the reliability figures)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Budget:
    fuzz_inputs: int = 1_000_000  # per decoder (issue 15: at least 10**6)
    fuzz_max_s: int = 420  # per decoder: a wall-clock cap on a loaded machine
    fuzz_parallel: int = 2  # decoders fuzzed at once (one per core)
    secrets_clients: int = 4  # IKE SAs (each with a Child SA) whose keys the secrets study seeks
    confinement_timeout_s: float = 5.0  # per etcd request of the confinement study

    def quick(self) -> Budget:
        return replace(self, fuzz_inputs=20_000, fuzz_max_s=60, secrets_clients=2)


BUDGET = Budget()
