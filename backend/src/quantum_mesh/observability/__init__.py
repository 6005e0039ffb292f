"""Operator-facing observability: Prometheus metrics of the control and execution planes."""
