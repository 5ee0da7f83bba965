"""This host: identity, inventory (CPUs, memory, disk, GPUs), diagnosis, systemd."""
