"""authproxy: an authentication decision service for reverse proxies."""

__version__ = "0.1.0"
