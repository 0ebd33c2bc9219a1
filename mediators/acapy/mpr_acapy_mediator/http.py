"""`-it mpr_acapy_mediator.http HOST PORT`: mpr_acapy's HTTP inbound transport (senders' POSTs
answered once processed) plus `GET /invitation`, as the Credo mediator (mediators/credo) has it:
the mediator's one multi-use out-of-band invitation, `text/plain`, 200 once the instance is
ready (the wallet open, the mpr server connected), 503 before. Load balancers and health checks
ask it; operators hand it to phones."""

import asyncio
import json
import logging
from typing import Optional

from aiohttp import web

from acapy_agent.protocols.out_of_band.v1_0.manager import OutOfBandManager
from acapy_agent.protocols.out_of_band.v1_0.messages.invitation import HSProto
from acapy_agent.storage.base import BaseStorage
from acapy_agent.storage.error import StorageDuplicateError, StorageNotFoundError
from acapy_agent.storage.record import StorageRecord

from mpr_acapy import http
from mpr_acapy.mediator import MprMediator

LOGGER = logging.getLogger(__name__)

# One per wallet: the first instance to make it stores its URL under this fixed id; one racing
# it gets a duplicate error and serves the winner's (its own invitation stays unused).
RECORD_TYPE = "mpr_mediator_invitation"
RECORD_ID = "mpr-mediator-invitation"


# Subclassed through its module, as mpr_acapy.http's (ACA-Py's loader takes the first
# BaseInboundTransport subclass it finds in the module).
class MediatorHttpTransport(http.MprHttpTransport):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._invitation_url: Optional[str] = None
        self._invitation_lock = asyncio.Lock()

    async def make_application(self) -> web.Application:
        app = await super().make_application()
        app.add_routes([web.get("/invitation", self.invitation_handler)])
        return app

    async def invitation_handler(self, _request: web.BaseRequest):
        mediator = self.root_profile.inject_or(MprMediator) if self.root_profile else None
        if mediator is None or not mediator.client.is_connected:
            return web.Response(status=503, text="not ready: no connection to the mpr server\n")
        try:
            url = await self.invitation_url()
        except Exception as error:
            LOGGER.warning("mpr_acapy_mediator: the invitation is not available (%s)", error)
            return web.Response(status=503, text="not ready: the invitation is not available\n")
        return web.Response(text=url)

    async def invitation_url(self) -> str:
        async with self._invitation_lock:
            if self._invitation_url is None:
                self._invitation_url = await kept_invitation_url(self.root_profile)
            return self._invitation_url


async def kept_invitation_url(profile) -> str:
    """The invitation URL kept in the wallet, made when there is none."""
    async with profile.session() as session:
        storage = session.inject(BaseStorage)
        try:
            return json.loads((await storage.get_record(RECORD_TYPE, RECORD_ID)).value)["url"]
        except StorageNotFoundError:
            pass
    record = await OutOfBandManager(profile).create_invitation(
        multi_use=True, hs_protos=[HSProto.DIDEX_1_1]
    )
    invitation = record.invitation
    # ACA-Py names its first endpoint only; like Credo, one inline service per endpoint, so a
    # phone (WebSocket only) finds the SocketDock URL and a sender the HTTP one.
    settings = profile.settings
    endpoints = [settings.get("default_endpoint"), *settings.get("additional_endpoints", [])]
    template = invitation.services[0]
    invitation.services = [
        type(template)(
            _id=f"#inline-{i}",
            _type=template._type,
            recipient_keys=template.recipient_keys,
            routing_keys=template.routing_keys,
            service_endpoint=endpoint,
        )
        for i, endpoint in enumerate(endpoints)
    ]
    url = invitation.to_url(endpoints[0])
    async with profile.session() as session:
        storage = session.inject(BaseStorage)
        try:
            await storage.add_record(
                StorageRecord(RECORD_TYPE, json.dumps({"url": url, "oob_id": record.oob_id}), id=RECORD_ID)
            )
            return url
        except StorageDuplicateError:
            return json.loads((await storage.get_record(RECORD_TYPE, RECORD_ID)).value)["url"]
