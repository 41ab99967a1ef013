"""Interagency secure data-exchange gateway.

The public surface is listed in ``__all__``; everything else is an
implementation module that may change between releases.
"""

from gateway.errors import GatewayError, ProblemError, SetupError

__version__ = "0.1.0"

__all__ = ["GatewayError", "ProblemError", "SetupError", "__version__"]
