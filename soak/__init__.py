"""The soak: reliability figures of the whole project from bounded runs (`make soak`).

A package of its own, beside keyd, cluster and sprayer rather than inside bench/: bench measures
speed against baselines into docs/benchmarks.md; the soak looks for failures (bad input, leaked
keys, roles that reach too far) and writes docs/reliability.md. It imports the project's
decoders only through soak/decoders.py, so modules moving between packages touch one file.

One module per study (fuzzing, secrets, confinement), the fuzz targets in soak/targets/ (one
per decoder), every count and time limit in soak/budget.py, the document in soak/report.py.
"""
