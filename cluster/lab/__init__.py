"""The one-machine lab: a whole cluster in network namespaces (docs/lab.md).

`lab` (the `Lab` handle: up, exec, kill/start, status, down; `base` holds its state, lock and
processes, `clients` its clients), `topology` (namespaces, links, routes, filters),
`addresses` (the address plan), `strongswan` (charon clients and the baseline gateway),
`daemons` (keyd, cluster-node, sprayer, cluster-hooks configurations), `pki` (certificates
and secrets on disk), `forwarder` (root-namespace loopback into etcd), `state` (state.json),
`teardown` (removing it all), `demo` (`clusterctl lab demo`).
"""
