"""Shared cluster state, ESP data plane, node agent, CLI, hooks and lab."""
