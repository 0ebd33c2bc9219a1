"""Push notifications (Aries RFC 0734, push-notifications-fcm/1.0): a recipient tells its mediator
its device's FCM token with `set-device-info`; the plugin keeps it in the connection record's
metadata (in the shared wallet, so every instance knows it), and the forward handler gives it to
the server with each message it queues for that connection (addMessage's
pushNotificationToken), so the server wakes the phone while it has no live session."""

import json
from typing import Optional

from marshmallow import EXCLUDE, fields

from acapy_agent.connections.models.conn_record import ConnRecord
from acapy_agent.core.profile import Profile
from acapy_agent.messaging.agent_message import AgentMessage, AgentMessageSchema
from acapy_agent.messaging.base_handler import (
    BaseHandler,
    BaseResponder,
    HandlerException,
    RequestContext,
)
from acapy_agent.protocols.problem_report.v1_0.message import ProblemReport
from acapy_agent.storage.base import BaseStorage
from acapy_agent.storage.error import StorageNotFoundError

PROTOCOL = "push-notifications-fcm/1.0"
SET_DEVICE_INFO = f"{PROTOCOL}/set-device-info"
# The connection record's metadata key (the name mediators/credo uses in its own wallet); the
# value is {"device_token", "device_platform"}, as the message names them.
METADATA_KEY = "push_notification_fcm"

HERE = "mpr_acapy.push"


class SetDeviceInfo(AgentMessage):
    class Meta:
        handler_class = f"{HERE}.SetDeviceInfoHandler"
        message_type = SET_DEVICE_INFO
        schema_class = "SetDeviceInfoSchema"

    def __init__(self, *, device_token=None, device_platform=None, **kwargs):
        super().__init__(**kwargs)
        self.device_token = device_token
        self.device_platform = device_platform


class SetDeviceInfoSchema(AgentMessageSchema):
    class Meta:
        model_class = SetDeviceInfo
        unknown = EXCLUDE

    # Checked by the handler, which answers anything but a non-empty string or null with a
    # problem report naming the field (a failed schema only says "validation failed"); a
    # missing one loads as "", so it is answered the same way.
    device_token = fields.Raw(required=False, allow_none=True, load_default="")
    device_platform = fields.Str(required=False, allow_none=True)


MESSAGE_TYPES = {SET_DEVICE_INFO: f"{HERE}.SetDeviceInfo"}


class SetDeviceInfoHandler(BaseHandler):
    async def handle(self, context: RequestContext, responder: BaseResponder):
        if not context.connection_ready or not context.connection_record:
            raise HandlerException("set-device-info needs a ready connection")
        message = context.message
        token = message.device_token
        # A token of null turns pushes off (RFC 0734).
        if token is not None and (not isinstance(token, str) or not token):
            report = ProblemReport(
                description={
                    "en": "set-device-info: device_token must be a string or null",
                    "code": "invalid-device-token",
                }
            )
            report.assign_thread_from(message)
            await responder.send_reply(report)
            return
        async with context.profile.session() as session:
            await context.connection_record.metadata_set(
                session,
                METADATA_KEY,
                {"device_token": token, "device_platform": message.device_platform},
            )


async def push_token(profile: Profile, connection_id: str) -> Optional[dict]:
    """addMessage's pushNotificationToken for the connection: its FCM token, if it gave one.

    One wallet read per forward (ConnRecord.metadata_get's, without loading the record itself);
    nothing is cached, so a token set through another instance counts at once."""
    async with profile.session() as session:
        try:
            record = await session.inject(BaseStorage).find_record(
                ConnRecord.RECORD_TYPE_METADATA,
                {"key": METADATA_KEY, "connection_id": connection_id},
            )
        except StorageNotFoundError:
            return None
    try:
        token = json.loads(record.value).get("device_token")
    except (ValueError, AttributeError):
        return None
    return {"type": "fcm", "token": token} if isinstance(token, str) and token else None
