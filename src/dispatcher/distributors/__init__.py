"""Distributor adapters (SPEC §7): the contract every adapter implements, the registry
that builds the configured instances from entry points, the built-in adapters, and the
loop that hands jobs to them."""
