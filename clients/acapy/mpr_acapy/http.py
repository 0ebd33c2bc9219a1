"""`-it mpr_acapy.http HOST PORT`: ACA-Py's HTTP inbound transport, but a POST is answered
only once its message was processed, and a forward the mpr server did not store is answered
503 (core answers 200 before processing: the sender would never know)."""

from typing import Optional, Union

from aiohttp import web

from acapy_agent.messaging.error import MessageParseError
from acapy_agent.transport.error import WireFormatParseError
from acapy_agent.transport.inbound import http
from acapy_agent.transport.inbound.message import InboundMessage
from acapy_agent.transport.inbound.session import InboundSession
from acapy_agent.transport.wire_format import DIDCOMM_V0_MIME_TYPE, DIDCOMM_V1_MIME_TYPE


# Subclassed through its module: importing the class by name would make ACA-Py's loader, which
# takes the first BaseInboundTransport subclass it finds here, load the stock one.
class MprHttpTransport(http.HttpTransport):
    async def inbound_message_handler(self, request: web.BaseRequest):
        session = await self.create_session(
            accept_undelivered=True,
            can_respond=True,
            client_info={"host": request.host, "remote": request.remote},
        )
        async with session:
            _, reply = await process(session, await request_body(request))
            return response(session, reply)


async def request_body(request: web.BaseRequest) -> Union[str, bytes]:
    if request.headers.get("content-type", "").split(";", 1)[0].lower() == "application/json":
        return await request.text()
    return await request.read()


async def process(
    session: InboundSession, body: Union[str, bytes]
) -> tuple[InboundMessage, Optional[Union[str, bytes]]]:
    """Receives `body` on `session` and waits until it was handled; returns the message and
    its return-route reply (None without one). A message that does not parse raises 400; a
    forward the server did not store raises 503."""
    try:
        inbound = await session.receive(body)
    except (MessageParseError, WireFormatParseError) as error:
        raise web.HTTPBadRequest(reason=str(error))
    await inbound.wait_processing_complete()
    not_queued = getattr(inbound.receipt, "mpr_not_queued", None)
    if not_queued:
        raise web.HTTPServiceUnavailable(reason=f"forward not queued: {not_queued}")
    if not inbound.receipt.direct_response_requested or not session.response_buffer:
        return inbound, None
    reply = await session.wait_response()
    session.can_respond = False
    session.clear_response()
    return inbound, reply


def response(session: InboundSession, reply, headers: Optional[dict] = None) -> web.Response:
    """200 with the return-route reply as the body (an empty body without one)."""
    headers = dict(headers or {})
    if reply is None:
        return web.Response(status=200, headers=headers)
    if isinstance(reply, bytes):
        new_mime = session.profile.settings.get("emit_new_didcomm_mime_type")
        headers["Content-Type"] = DIDCOMM_V1_MIME_TYPE if new_mime else DIDCOMM_V0_MIME_TYPE
        return web.Response(body=reply, headers=headers)
    headers["Content-Type"] = "application/json"
    return web.Response(text=reply, headers=headers)
