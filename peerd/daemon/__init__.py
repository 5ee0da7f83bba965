"""The daemon: composition root, services, lifecycle, control operations, views, metrics."""
