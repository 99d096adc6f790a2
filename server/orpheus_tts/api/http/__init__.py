"""HTTP and WebSocket APIs (FastAPI on uvicorn), served beside gRPC on the same event loop."""

from orpheus_tts.api.http.app import HttpSettings, create_app
from orpheus_tts.api.http.serving import HttpServer

__all__ = ["HttpServer", "HttpSettings", "create_app"]
