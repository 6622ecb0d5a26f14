"""etcd watch hooks: cluster events to executables and webhooks (`cluster-hooks`)."""

from cluster.start import quiet_interrupt_while_starting

quiet_interrupt_while_starting("cluster-hooks")
