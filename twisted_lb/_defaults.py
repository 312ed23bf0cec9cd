"""
The default of every setting that both the config schema and a library class have.

:mod:`twisted_lb.config` declares its fields with these, and :class:`~twisted_lb.pool.Pool`,
the frontend factories, the health checks and the outlier detector use them as their keyword
defaults, so that a key left out of ``lb.toml`` and an argument left out in code mean the same.
Durations are in seconds, sizes in bytes.
"""

# frontends
CLIENT_TIMEOUT = 60.0
MAX_CONNECTIONS = 10000
HEADER_TIMEOUT = 10.0
MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 0
TUNNEL_TIMEOUT = 3600.0
# Mozilla "intermediate" (https://ssl-config.mozilla.org/guidelines/5.7.json) groups.
TLS_CURVES = ("X25519", "prime256v1", "secp384r1")
MIN_TLS_VERSION = "TLSv1.2"

# global
ACCESS_LOG_BUFFER = 65536
ACCESS_LOG_FLUSH = 1.0
DRAIN_TIMEOUT = 30.0

# admin
ADMIN_SOCKET_MODE = 0o600

# pools
STRATEGY = "round_robin"
# The largest backend weight, as HAProxy's (its weight is 0 to 256, 0 being our drain).
MAX_WEIGHT = 256
CONNECT_TIMEOUT = 5.0
RETRIES = 2
RESPONSE_TIMEOUT = 60.0
UPSTREAM_IDLE_TIMEOUT = 4.0
MAX_IDLE_PER_BACKEND = 128
SLOW_START = 0.0

# health checks
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 1.0
CHECK_RISE = 2
CHECK_FALL = 3
CHECK_JITTER = 0.1
CHECK_PATH = "/"
CHECK_EXPECT_STATUS = (200, 399)

# outlier detection
CONSECUTIVE_FAILURES = 5
BASE_EJECTION_TIME = 30.0
MAX_EJECTION_TIME = 300.0
MAX_EJECTION_PERCENT = 50
