"""The HTTP side of dispatcher (SPEC §10): a read-only status page, Prometheus metrics
and a health check, on one port."""
