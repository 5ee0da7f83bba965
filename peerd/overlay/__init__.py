"""A gang's private network: one WireGuard interface per container, keys per lease."""
