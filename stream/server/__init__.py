"""`sentistream serve`'s server: HTTP routes (app), one WebRTC peer per `Connection` (signalling and
lifecycle), its `EventChannel` and returned `OverlayTrack`, and the `ConnectionManager` of slots."""
from __future__ import annotations

from .app import create_app
from .connection import Connection, OfferError
from .manager import ConnectionManager

__all__ = ["Connection", "ConnectionManager", "OfferError", "create_app"]
