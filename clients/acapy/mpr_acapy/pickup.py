"""Message Pickup 2.0 (RFC 0685) for recipients of this mediator, on the mpr server's queue."""

import uuid
from datetime import datetime, timezone

from marshmallow import EXCLUDE, fields

from acapy_agent.messaging.agent_message import AgentMessage, AgentMessageSchema
from acapy_agent.messaging.base_handler import (
    BaseHandler,
    BaseResponder,
    HandlerException,
    RequestContext,
)

from .mediator import PICKUP, Binding, MprMediator, delivery, did_key, socketdock_frame

PROTOCOL = "messagepickup/2.0"
STATUS_REQUEST = f"{PROTOCOL}/status-request"
DELIVERY_REQUEST = f"{PROTOCOL}/delivery-request"
MESSAGES_RECEIVED = f"{PROTOCOL}/messages-received"
LIVE_DELIVERY_CHANGE = f"{PROTOCOL}/live-delivery-change"

HERE = "mpr_acapy.pickup"


class StatusRequest(AgentMessage):
    class Meta:
        handler_class = f"{HERE}.StatusRequestHandler"
        message_type = STATUS_REQUEST
        schema_class = "StatusRequestSchema"

    def __init__(self, *, recipient_key=None, **kwargs):
        super().__init__(**kwargs)
        self.recipient_key = recipient_key


class StatusRequestSchema(AgentMessageSchema):
    class Meta:
        model_class = StatusRequest
        unknown = EXCLUDE

    recipient_key = fields.Str(required=False, allow_none=True)


class DeliveryRequest(AgentMessage):
    class Meta:
        handler_class = f"{HERE}.DeliveryRequestHandler"
        message_type = DELIVERY_REQUEST
        schema_class = "DeliveryRequestSchema"

    def __init__(self, *, limit=None, recipient_key=None, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit
        self.recipient_key = recipient_key


class DeliveryRequestSchema(AgentMessageSchema):
    class Meta:
        model_class = DeliveryRequest
        unknown = EXCLUDE

    limit = fields.Int(required=True, strict=True, validate=lambda n: n >= 1)
    recipient_key = fields.Str(required=False, allow_none=True)


class MessagesReceived(AgentMessage):
    class Meta:
        handler_class = f"{HERE}.MessagesReceivedHandler"
        message_type = MESSAGES_RECEIVED
        schema_class = "MessagesReceivedSchema"

    def __init__(self, *, message_id_list=None, **kwargs):
        super().__init__(**kwargs)
        self.message_id_list = message_id_list or []


class MessagesReceivedSchema(AgentMessageSchema):
    class Meta:
        model_class = MessagesReceived
        unknown = EXCLUDE

    message_id_list = fields.List(fields.Str(), required=True)


class LiveDeliveryChange(AgentMessage):
    class Meta:
        handler_class = f"{HERE}.LiveDeliveryChangeHandler"
        message_type = LIVE_DELIVERY_CHANGE
        schema_class = "LiveDeliveryChangeSchema"

    def __init__(self, *, live_delivery=False, **kwargs):
        super().__init__(**kwargs)
        self.live_delivery = live_delivery


class LiveDeliveryChangeSchema(AgentMessageSchema):
    class Meta:
        model_class = LiveDeliveryChange
        unknown = EXCLUDE

    live_delivery = fields.Bool(required=True)


MESSAGE_TYPES = {
    STATUS_REQUEST: f"{HERE}.StatusRequest",
    DELIVERY_REQUEST: f"{HERE}.DeliveryRequest",
    MESSAGES_RECEIVED: f"{HERE}.MessagesReceived",
    LIVE_DELIVERY_CHANGE: f"{HERE}.LiveDeliveryChange",
}


class PickupHandler(BaseHandler):
    """Common to the four: a ready connection, and replies on the session the request came on."""

    async def handle(self, context: RequestContext, responder: BaseResponder):
        if not context.connection_ready or not context.connection_record:
            raise HandlerException("Message Pickup needs a ready connection")
        self.mediator = context.inject(MprMediator)
        self.context = context
        self.responder = responder
        self.connection_id = context.connection_record.connection_id
        inbound = getattr(responder, "_inbound_message", None)
        self.session = self.mediator.session(inbound.session_id if inbound else None)
        self.frame = socketdock_frame(self.session)
        await self.answer(context.message)

    async def answer(self, message):
        raise NotImplementedError

    async def send(self, payload: dict) -> None:
        receipt = self.context.message_receipt
        if self.session is not None and self.session.can_respond:
            await self.mediator.reply(
                self.session,
                payload,
                receipt.sender_verkey,
                receipt.recipient_verkey,
                self.connection_id,
            )
        else:
            await self.responder.send(payload, connection_id=self.connection_id)

    async def status(self, message, recipient_key=None, live=None) -> dict:
        recipient_did = did_key(recipient_key) if recipient_key else None
        queue = await self.mediator.client.queue_status(self.connection_id, recipient_did)
        status = {
            "@type": f"{PICKUP}/status",
            "@id": str(uuid.uuid4()),
            "~thread": {"thid": message._thread_id},
            "message_count": queue["messageCount"],
        }
        # Those the server knows (none from a server without getQueueStatus; no bytes per key).
        if queue.get("totalBytes") is not None:
            status["total_bytes"] = queue["totalBytes"]
        if queue.get("oldestReceivedAt"):
            oldest = datetime.fromisoformat(queue["oldestReceivedAt"])
            status["oldest_received_time"] = queue["oldestReceivedAt"]
            status["longest_waited_seconds"] = max(
                0, int((datetime.now(timezone.utc) - oldest).total_seconds())
            )
        if queue.get("newestReceivedAt"):
            status["newest_received_time"] = queue["newestReceivedAt"]
        if recipient_key:
            status["recipient_key"] = recipient_key
        status["live_delivery"] = live if live is not None else await self.live()
        return status

    async def live(self) -> bool:
        """Whether the connection's new messages are pushed to the recipient: live mode on this
        instance; for a frame through SocketDock, whether the server has the connection bound
        to a socket (by any instance; implicit pickup's raw frames count too)."""
        if self.frame is not None:
            return await self.mediator.client.live_session(self.connection_id)
        binding = self.mediator.bindings.get(self.connection_id)
        return bool(binding and binding.pickup)


class StatusRequestHandler(PickupHandler):
    async def answer(self, message: StatusRequest):
        await self.send(await self.status(message, message.recipient_key))


class DeliveryRequestHandler(PickupHandler):
    async def answer(self, message: DeliveryRequest):
        recipient_did = did_key(message.recipient_key) if message.recipient_key else None
        messages = await self.mediator.client.take_from_queue(
            self.connection_id, recipient_did=recipient_did, limit=message.limit
        )
        if messages:
            await self.send(delivery(messages, message._thread_id, message.recipient_key))
        else:
            await self.send(await self.status(message, message.recipient_key))


class MessagesReceivedHandler(PickupHandler):
    async def answer(self, message: MessagesReceived):
        if message.message_id_list:
            await self.mediator.client.remove_messages(
                self.connection_id, message.message_id_list
            )
        binding = self.mediator.bindings.get(self.connection_id)
        if binding and binding.pickup:
            binding.acknowledge(message.message_id_list)
        pushed = (
            binding is not None and binding.pickup and binding.session is self.session
            if self.frame is None
            else await self.live()
        )
        if pushed:
            # Live: new messages come as pushes. A status counting one that is being pushed
            # would make the recipient also request it, and the two paths can swap its order.
            return
        await self.send(await self.status(message))


class LiveDeliveryChangeHandler(PickupHandler):
    async def answer(self, message: LiveDeliveryChange):
        receipt = self.context.message_receipt
        if self.frame is not None:
            # Through SocketDock the frame's answer tells the server, which binds the socket.
            self.frame.live_delivery = (self.connection_id, message.live_delivery)
        elif message.live_delivery:
            if self.session is None or not self.session.can_respond:
                raise HandlerException("live delivery needs a return-route session")
            await self.mediator.bind(
                Binding(
                    connection_id=self.connection_id,
                    session=self.session,
                    recipient_verkey=receipt.sender_verkey,
                    mediator_verkey=receipt.recipient_verkey,
                    pickup=True,
                )
            )
        else:
            await self.mediator.unbind(self.connection_id)
        await self.send(await self.status(message, live=message.live_delivery))
