"""`-it mpr_acapy.socketdock HOST PORT`: the mediator's side of the mpr server's SocketDock
adapter (docs/socketdock.md, "The contract for a mediator"): the server's MEDIATOR_URL, taking
two kinds of POST.

- A frame an agent sent through SocketDock (`X-Mpr-Socket-Id`): handled by ACA-Py on a session
  of its own whose return-route reply is the answer's body; the answer names the connection the
  frame came from (`X-Mpr-Connection-Id`), which binds the socket, and says when the frame
  turned Pickup 2.0 live mode on or off (`X-Mpr-Live-Delivery`).
- A connection's messages to wrap (`X-Mpr-Deliver`): answered with a Pickup 2.0 delivery of
  them packed for the connection's recipient (only the mediator has the keys); the server sends
  it to the socket, and the recipient's messages-received removes them.

Nothing about a recipient is kept between requests: any instance takes any of them. Keep the
port internal: it is for the servers, not for agents.
"""

import json
import logging
import re

from aiohttp import web

from acapy_agent.connections.base_manager import BaseConnectionManager
from acapy_agent.storage.error import StorageNotFoundError
from acapy_agent.transport.inbound import base
from acapy_agent.transport.wire_format import BaseWireFormat

from .http import process, request_body, response
from .mediator import SocketDockFrame, delivery

LOGGER = logging.getLogger(__name__)

SOCKET_HEADER = "X-Mpr-Socket-Id"
DELIVER_HEADER = "X-Mpr-Deliver"
CONNECTION_HEADER = "X-Mpr-Connection-Id"
LIVE_DELIVERY_HEADER = "X-Mpr-Live-Delivery"
DIDCOMM_TYPE = "application/didcomm-envelope-enc"
# The server's SOCKETDOCK_MAX_BODY_BYTES default.
MAX_BODY_BYTES = 4 << 20

# Pickup 2.0 requests answer in their reply and bind no socket: a recipient that polls is not
# pushed to. Other return-route frames bind it (implicit pickup, or live mode: acknowledged).
PICKUP_REQUEST = re.compile(
    r"/messagepickup/2\.0/(status-request|delivery-request|messages-received)$"
)


class SocketDockTransport(base.BaseInboundTransport):
    def __init__(self, host: str, port: int, create_session, **kwargs) -> None:
        super().__init__("socketdock", create_session, **kwargs)
        self.host = host
        self.port = port
        self.site: web.BaseSite = None

    async def start(self) -> None:
        # A wrap request holds up to SOCKETDOCK_DELIVERY_BATCH messages: more than one message
        # ACA-Py takes (--max-message-size) may be in it.
        app = web.Application(client_max_size=max(self.max_message_size, MAX_BODY_BYTES))
        app.add_routes([web.post("/", self.handle)])
        runner = web.AppRunner(app)
        await runner.setup()
        self.site = web.TCPSite(runner, host=self.host, port=self.port)
        try:
            await self.site.start()
        except OSError as error:
            raise base.InboundTransportSetupError(
                f"mpr_acapy.socketdock cannot listen on {self.host}:{self.port}: {error}"
            )

    async def stop(self) -> None:
        if self.site:
            await self.site.stop()
            self.site = None

    async def handle(self, request: web.BaseRequest) -> web.Response:
        connection_id = request.headers.get(DELIVER_HEADER)
        if connection_id:
            return await self.wrap(request, connection_id)
        socket_id = request.headers.get(SOCKET_HEADER)
        if not socket_id:
            raise web.HTTPBadRequest(reason=f"{SOCKET_HEADER} or {DELIVER_HEADER} is required")
        return await self.frame(request, socket_id)

    async def frame(self, request: web.BaseRequest, socket_id: str) -> web.Response:
        session = await self.create_session(
            accept_undelivered=False,
            can_respond=True,
            client_info={"host": request.host, "remote": request.remote, "socket": socket_id},
        )
        frame = session.mpr_socketdock_frame = SocketDockFrame()
        async with session:
            inbound, reply = await process(session, await request_body(request))
        headers = {}
        message_type = str(inbound.payload.get("@type", ""))
        if frame.live_delivery is not None:
            live_connection, on = frame.live_delivery
            headers[CONNECTION_HEADER] = live_connection
            headers[LIVE_DELIVERY_HEADER] = "on" if on else "off"
        elif (
            inbound.connection_id
            and inbound.receipt.direct_response_requested
            and not PICKUP_REQUEST.search(message_type)
        ):
            headers[CONNECTION_HEADER] = inbound.connection_id
        return response(session, reply, headers)

    async def wrap(self, request: web.BaseRequest, connection_id: str) -> web.Response:
        try:
            messages = parse_delivery(connection_id, await request.text())
        except ValueError as error:
            raise web.HTTPBadRequest(reason=str(error))
        profile = self.root_profile
        try:
            targets = await BaseConnectionManager(profile).get_connection_targets(
                connection_id=connection_id
            )
        except StorageNotFoundError:
            raise web.HTTPNotFound(reason=f"no connection {connection_id}")
        target = next((t for t in targets if t.recipient_keys and t.sender_key), None)
        if target is None:
            LOGGER.warning("mpr_acapy: no keys of connection %s to pack a delivery", connection_id)
            raise web.HTTPInternalServerError(reason=f"no keys of connection {connection_id}")
        # Packed for the recipient alone, as a reply on its socket is: no routing keys.
        async with profile.session() as session:
            packed = await profile.inject(BaseWireFormat).encode_message(
                session,
                json.dumps(delivery(messages)),
                target.recipient_keys,
                None,
                target.sender_key,
            )
        return web.Response(body=packed, headers={"Content-Type": DIDCOMM_TYPE})


def parse_delivery(connection_id: str, body: str) -> list[dict]:
    """The messages of a wrap request; ValueError naming what is wrong."""
    try:
        request = json.loads(body)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(request, dict) or request.get("connectionId") != connection_id:
        raise ValueError(f"connectionId must be the {DELIVER_HEADER} header's")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty array")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("id"), str)
            or not isinstance(m.get("receivedAt"), str)
            or not isinstance(m.get("encryptedMessage"), dict)
        ):
            raise ValueError(f"messages[{i}] must be {{id, receivedAt, encryptedMessage}}")
    return messages
