"""The gRPC door's access check: one server interceptor in front of every method.

The key comes in metadata, `authorization: Bearer KEY` or `x-api-key: KEY`. A request without a
known key ends with UNAUTHENTICATED; one over its key's limits with RESOURCE_EXHAUSTED and
trailing `retry-after` (seconds), as the engine's own refusals do. A speech stream holds its
key's session slot for as long as its handler runs, so the slot is freed however the stream
ends: finished, failed, cancelled by the client or past its deadline.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time

import grpc

from orpheus_tts.api.access import AccessControl, bearer_token
from orpheus_tts.api.request_log import log_request, request_id
from orpheus_tts.api.servicer import REQUEST_ID_KEY, SERVICE_NAME
from orpheus_tts.errors import BusyError, UnauthenticatedError
from orpheus_tts.metrics import ServerMetrics

PROBE_PREFIX = "/grpc.health.v1.Health/"
STREAM_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("Synthesize", "StreamingSynthesize"))


class AccessInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, access: AccessControl, metrics: ServerMetrics):
        self.access = access
        self.metrics = metrics

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or self.access.is_open(probe=details.method.startswith(PROBE_PREFIX)):
            return handler  # an unknown method is UNIMPLEMENTED, key or no key
        method, stream = details.method, details.method in STREAM_METHODS
        return _guarded(handler, lambda context: self._admitted(method, stream, context))

    @contextlib.asynccontextmanager
    async def _admitted(self, method: str, stream: bool, context: grpc.aio.ServicerContext):
        metadata = dict(context.invocation_metadata() or ())
        token = bearer_token(metadata.get("authorization")) or metadata.get("x-api-key")
        try:
            permit = self.access.admit(token, "grpc", stream)
        except UnauthenticatedError as exc:
            await self._refuse(context, method, metadata, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except BusyError as exc:
            await self._refuse(context, method, metadata, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                               getattr(exc, "key", "-"), (("retry-after", str(exc.retry_after_s)),))
        with permit:
            yield

    async def _refuse(self, context, method: str, metadata: dict, code: grpc.StatusCode, message: str,
                      key: str = "-", trailing: tuple = ()) -> None:
        """Count, log and end the request with `code` (abort raises)."""
        rid, label = request_id(metadata.get(REQUEST_ID_KEY)), method_label(method)
        self.metrics.request_done(label, code.name.lower())
        log_request(logging.INFO, {"id": rid, "method": label, "key": key, "outcome": code.name.lower()}, None,
                    time.monotonic(), message)
        await context.abort(code, message, trailing_metadata=((REQUEST_ID_KEY, rid), *trailing))


def method_label(method: str) -> str:
    """`Synthesize` for our service's methods (as the servicer counts them), `Health/Check` for others'."""
    service, _, name = method.lstrip("/").rpartition("/")
    return name if service == SERVICE_NAME else f"{service.rsplit('.', 1)[-1]}/{name}"


def _guarded(handler: grpc.RpcMethodHandler, guard) -> grpc.RpcMethodHandler:
    """The handler with its behaviour run inside `guard(context)`, an async context manager."""
    kind = ("stream_" if handler.request_streaming else "unary_") + \
           ("stream" if handler.response_streaming else "unary")
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):
        async def run(request, context):
            # aclosing: a call cancelled mid-stream closes the servicer's generator (and its
            # session) before the guard releases the key's slot, not whenever it is collected
            async with guard(context), contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
    else:  # a unary response, or a stream written with context.write (as the health service's Watch)
        async def run(request, context):
            async with guard(context):
                return await behavior(request, context)
    return handler._replace(**{kind: run})
