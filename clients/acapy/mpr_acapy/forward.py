"""routing/1.0/forward, queued in the mpr server: the forward succeeds only once the server
stored the message; otherwise it fails (and mpr_acapy.http answers the POST 503)."""

from acapy_agent.core.event_bus import Event
from acapy_agent.messaging.base_handler import (
    BaseHandler,
    BaseResponder,
    HandlerException,
    RequestContext,
)
from acapy_agent.protocols.routing.v1_0.handlers.forward_handler import ForwardHandler
from acapy_agent.protocols.routing.v1_0.manager import RoutingManager, RoutingManagerError
from acapy_agent.protocols.routing.v1_0.messages.forward import Forward, ForwardSchema
from acapy_agent.transport.outbound.status import OutboundSendStatus

from .mediator import MprMediator, did_key, envelope_recipient_dids
from .push import push_token
from .rpc import MprConnectionError, MprError

FORWARD = "routing/1.0/forward"


class MprForward(Forward):
    class Meta:
        handler_class = "mpr_acapy.forward.MprForwardHandler"
        message_type = FORWARD
        schema_class = "MprForwardSchema"


class MprForwardSchema(ForwardSchema):
    class Meta(ForwardSchema.Meta):
        model_class = MprForward


class MprForwardHandler(BaseHandler):
    async def handle(self, context: RequestContext, responder: BaseResponder):
        if not context.message_receipt.recipient_verkey:
            raise HandlerException("Cannot forward message: unknown recipient")
        try:
            route = await RoutingManager(context.profile).get_recipient(context.message.to)
        except RoutingManagerError:
            # No recipient of ours: core's handler says so the way it always did.
            await ForwardHandler().handle(context, responder)
            return
        envelope = context.message.msg
        try:
            recipient_dids = envelope_recipient_dids(envelope)
        except (ValueError, KeyError, TypeError):
            recipient_dids = []
        mediator = context.inject(MprMediator)
        try:
            # RFC 0734: the recipient's FCM token, if it gave one (one wallet read, not cached).
            token = await push_token(context.profile, route.connection_id)
            await mediator.client.add_message(
                route.connection_id,
                recipient_dids or [did_key(route.recipient_key)],
                envelope,
                push_token=token,
            )
        except (MprError, MprConnectionError) as error:
            # Read by mpr_acapy.http, which answers the sender's POST with an error.
            context.message_receipt.mpr_not_queued = str(error)
            raise HandlerException(f"forward for {route.connection_id} not queued: {error}")
        await context.profile.notify(
            "acapy::forward::received",
            {
                "connection_id": route.connection_id,
                "status": OutboundSendStatus.WAITING_FOR_PICKUP.value,
                "recipient_key": context.message.to,
            },
        )
