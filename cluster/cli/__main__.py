"""`python -m cluster.cli` is `clusterctl`."""

from cluster.cli.main import main

main()
