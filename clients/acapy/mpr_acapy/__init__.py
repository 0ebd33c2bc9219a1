"""ACA-Py plugin: a mediator whose queue and live sessions live in an mpr server.

    aca-py start ... --plugin mpr_acapy -o mpr_acapy.url=ws://mpr:3100 [-o mpr_acapy.token=T]

Settings also from MPR_ACAPY_URL / MPR_ACAPY_TOKEN (the -o value wins).
"""

import logging
import os
import re

from acapy_agent.config.injection_context import InjectionContext
from acapy_agent.core.event_bus import EventBus
from acapy_agent.core.profile import Profile
from acapy_agent.core.protocol_registry import ProtocolRegistry
from acapy_agent.core.util import STARTUP_EVENT_PATTERN
from acapy_agent.protocols.didcomm_prefix import DIDCommPrefix
from acapy_agent.transport.inbound.manager import InboundTransportManager

from . import forward, pickup, push
from .mediator import MprMediator
from .rpc import MprClient

LOGGER = logging.getLogger(__name__)


class SettingsError(ValueError):
    pass


async def setup(context: InjectionContext):
    settings = context.settings.for_plugin("mpr_acapy")
    url = settings.get("url") or os.environ.get("MPR_ACAPY_URL")
    if not url or not re.match(r"^wss?://", url):
        raise SettingsError(
            "mpr_acapy: set -o mpr_acapy.url=ws://HOST:PORT (or MPR_ACAPY_URL) "
            f"to the mpr server's WebSocket URL; got {url!r}"
        )
    token = settings.get("token") or os.environ.get("MPR_ACAPY_TOKEN") or None
    mediator = MprMediator(MprClient(url, token))
    context.injector.bind_instance(MprMediator, mediator)

    registry = context.inject(ProtocolRegistry)
    # Registered after core's protocols, so this forward replaces core's.
    registry.register_message_types(
        DIDCommPrefix.qualify_all({forward.FORWARD: forward.MprForward})
    )
    registry.register_message_types(DIDCommPrefix.qualify_all(pickup.MESSAGE_TYPES))
    registry.register_message_types(DIDCommPrefix.qualify_all(push.MESSAGE_TYPES))

    async def started(profile: Profile, _event):
        await mediator.start(profile.inject(InboundTransportManager))
        LOGGER.info("mpr_acapy: queue in %s", url)

    context.inject(EventBus).subscribe(STARTUP_EVENT_PATTERN, started)
