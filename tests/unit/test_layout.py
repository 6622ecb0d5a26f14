"""The test tree's own rules: pytest imports test modules by basename (rootdir-relative
`prepend` import mode), so two test files with one name in different tiers break collection."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py"
                    and "__pycache__" not in p.parts)
    assert not [n for n, k in names.items() if k > 1]
