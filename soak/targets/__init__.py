"""Fuzz targets, one module per decoder. Each module has:

- `TITLE`: what is decoded, for the report;
- `TYPED`: the exception types that mean "the decoder refused the input" (anything else
  escaping `one_input` is an untyped exception: a defect);
- `seeds() -> list[bytes]`: valid inputs the fuzzer starts from;
- `one_input(data)`: decode one input the way the component does.
"""

NAMES = ("ike", "esp", "records", "health", "handoff", "radius")
