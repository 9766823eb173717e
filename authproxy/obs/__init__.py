"""Observability: the decision log and the Prometheus metrics."""
