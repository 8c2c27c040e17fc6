"""gateway: an API gateway and reverse-proxy hub on aiohttp."""

__version__ = "0.1.0"
