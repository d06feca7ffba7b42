"""The convserve client: a typed HTTP client (sync and async) and the ``convserve`` command."""

from app.client.api import APIError, AsyncClient, Client, Event

__all__ = ["APIError", "AsyncClient", "Client", "Event"]
