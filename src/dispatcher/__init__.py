"""dispatcher: hands build jobs to build machines and backends; one SQL database holds the truth."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dispatcher")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
