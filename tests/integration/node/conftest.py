"""Registers the `node_lab` fixture (defined in node_lab.py, which the tests import by that
unique module name: several directories have a conftest.py)."""

from node_lab import node_lab

__all__ = ["node_lab"]
