"""The stages of the chain, one module each; `gateway/app.py` puts them in order."""

from __future__ import annotations

from aiohttp.typedefs import Handler, Middleware

__all__ = ["Handler", "Middleware"]
