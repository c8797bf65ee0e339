"""Experiments registered with :func:`icp_influence.registry.experiment` (auto-discovered)."""
