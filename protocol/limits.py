"""Bounds every message field is checked against, in one place.

Units: memory and sizes in bytes, durations in seconds, timestamps in seconds
since the Unix epoch, prices in credits per hour.
"""

MAX_CPUS = 4096.0
MAX_MEMORY = 1 << 50  # 1 PiB
MAX_GPUS = 64
MAX_TIMEOUT = 30 * 24 * 3600.0
MAX_PRICE = 1e12
MAX_TIMESTAMP = 1e11  # year ~5138: anything beyond is nonsense
MAX_COUNT = 1 << 40
MAX_SEQ = (1 << 63) - 1  # advert seq: e.g. milliseconds since the epoch
MAX_NODES = 64  # ranks of one gang job (JobSpec.nodes)
