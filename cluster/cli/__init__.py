"""`clusterctl`, the operator CLI (`cluster.cli.main`)."""

from cluster.start import quiet_interrupt_while_starting

quiet_interrupt_while_starting("clusterctl")
