"""The HTTP edge: the aiohttp application and the server around it."""

from gateway.web.app import create_app
from gateway.web.server import serve

__all__ = ["create_app", "serve"]
