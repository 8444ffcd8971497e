"""The review page: `create_app(config, sessions)` and `WebServer(config, sessions)`."""

from daemon.review.web.app import WebServer, create_app

__all__ = ["WebServer", "create_app"]
