"""What the plugin keeps per mediator instance: the mpr client, and the recipients' sessions
on this instance that receive their messages as they arrive (Pickup 2.0 live mode, or implicit
pickup on a return-route socket).

A session is bound with the server's `addLiveSession`: the server then pushes the connection's
new messages to this instance's socket, whichever instance queued them. Each binding has one
worker, so the messages reach the recipient in the order the server pushed them.
"""

import asyncio
import base64
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Optional

from acapy_agent.did.did_key import DIDKey
from acapy_agent.protocols.coordinate_mediation.v1_0.models.mediation_record import (
    MediationRecord,
)
from acapy_agent.storage.error import StorageNotFoundError
from acapy_agent.transport.inbound.message import InboundMessage
from acapy_agent.transport.inbound.receipt import MessageReceipt
from acapy_agent.transport.inbound.manager import InboundTransportManager
from acapy_agent.transport.inbound.session import InboundSession
from acapy_agent.transport.outbound.message import OutboundMessage
from acapy_agent.wallet.key_type import ED25519

from .rpc import MprClient, MprConnectionError, MprError

LOGGER = logging.getLogger(__name__)

PICKUP = "https://didcomm.org/messagepickup/2.0"
# How long a live delivery waits for the previous one's messages-received before it goes
# anyway (what was not acknowledged comes again after the server's visibility timeout).
ACK_WAIT_SECONDS = 10


class SessionGone(Exception):
    """The recipient's socket closed before the message was handed to it."""


def did_key(key: str) -> str:
    """A recipient key as the server's recipientDids hold it: did:key (base58 verkeys turned)."""
    if key.startswith("did:key:"):
        return key
    return DIDKey.from_public_key_b58(key, ED25519).did


def envelope_recipient_dids(envelope: dict) -> list[str]:
    """did:key of each recipient kid of a DIDComm v1 JWE (its protected header's recipients)."""
    protected = envelope.get("protected", "")
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    return [did_key(r["header"]["kid"]) for r in header.get("recipients", [])]


def delivery(messages: list[dict], thread_id: Optional[str] = None, recipient_key=None) -> dict:
    """A Pickup 2.0 delivery whose attachment ids are the server's message ids."""
    message = {
        "@type": f"{PICKUP}/delivery",
        "@id": str(uuid.uuid4()),
        "~attach": [
            {
                "@id": m["id"],
                "lastmod_time": m.get("receivedAt"),
                "data": {"json": m["encryptedMessage"]},
            }
            for m in messages
        ],
    }
    if recipient_key:
        message["recipient_key"] = recipient_key
    if thread_id:
        message["~thread"] = {"thid": thread_id}
    return message


@dataclass
class SocketDockFrame:
    """A session that is one frame an agent sent through SocketDock (mpr_acapy.socketdock): the
    server binds the agent's socket from the frame's answer, so nothing is bound here."""

    # (connectionId, on) when the frame turned Pickup 2.0 live mode on or off.
    live_delivery: Optional[tuple[str, bool]] = None


def socketdock_frame(session: Optional[InboundSession]) -> Optional[SocketDockFrame]:
    return getattr(session, "mpr_socketdock_frame", None)


@dataclass
class Binding:
    """A recipient's session on this instance that gets the connection's messages as they come."""

    connection_id: str
    session: InboundSession
    recipient_verkey: str
    mediator_verkey: str
    # True: Pickup 2.0 live mode (deliveries, acknowledged by messages-received); False:
    # implicit pickup (each message as the recipient's own envelope, removed once written).
    pickup: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: Optional[asyncio.Task] = None
    # Live mode: ids of the delivery the recipient has not acknowledged yet. The next delivery
    # waits for its messages-received: a recipient may work on two deliveries at once (Credo
    # does), and then their messages can reach its application swapped.
    unacked: set = field(default_factory=set)
    acked: asyncio.Event = field(default_factory=asyncio.Event)

    def acknowledge(self, ids) -> None:
        self.unacked.difference_update(ids)
        if not self.unacked:
            self.acked.set()

    @property
    def server_session_id(self) -> str:
        return f"acapy:{self.session.session_id}"


class MprMediator:
    def __init__(self, client: MprClient):
        self.client = client
        self.client.on_messages = self._pushed
        self.inbound: Optional[InboundTransportManager] = None
        self.bindings: dict[str, Binding] = {}
        self._write_locks: dict[str, asyncio.Lock] = {}
        # session id -> writes queued or running: while any, new ones queue behind them.
        self._writes: dict[str, int] = {}

    async def start(self, inbound: InboundTransportManager) -> None:
        self.inbound = inbound
        # Core's own replies go through the same ordered writer: core drops a reply whose
        # session's one-message buffer is busy (seen: a mediation grant lost that way).
        inbound.return_to_session = self.return_to_session
        self._core_return_undelivered = inbound.return_undelivered
        inbound.return_undelivered = self.return_undelivered
        core_dispatch_complete = inbound.dispatch_complete

        def dispatch_complete(message, completed):
            core_dispatch_complete(message, completed)
            self._maybe_implicit(message)

        inbound.dispatch_complete = dispatch_complete
        await self.client.connect()

    # -- writing to a recipient's session ---------------------------------------------------

    def session(self, session_id: Optional[str]) -> Optional[InboundSession]:
        return self.inbound.sessions.get(session_id) if self.inbound and session_id else None

    def return_to_session(self, outbound: OutboundMessage) -> bool:
        """InboundTransportManager.return_to_session, but a busy session queues the message."""
        preferred = self.session(outbound.reply_session_id)
        candidates = [preferred] if preferred else []
        candidates += [s for s in self.inbound.sessions.values() if s is not preferred]
        for session in candidates:
            if session.select_outbound(outbound):
                self._enqueue(session, outbound)
                return True
        return False

    def return_undelivered(self, outbound: OutboundMessage) -> bool:
        """Core's last resort for a message no transport can carry (a mobile recipient has no
        endpoint): a session the recipient keeps open for replies takes it. Core sends only
        replies to sessions; a message of its own, e.g. a mediation grant made after the
        request's handler returned, was otherwise lost without `--enable-undelivered-queue`."""
        targets = outbound.target_list or ([outbound.target] if outbound.target else [])
        open_sessions = [s for s in self.inbound.sessions.values() if s.can_respond]
        # A socket asking for all replies first; else any the key sent on and that is still open
        # (a message without return routing on it resets its mode, not the socket).
        open_sessions.sort(key=lambda s: s.reply_mode != MessageReceipt.REPLY_MODE_ALL)
        for target in targets:
            for key in target.recipient_keys or []:
                for session in open_sessions:
                    if key in session.reply_verkeys:
                        outbound.reply_to_verkey = key
                        outbound.reply_from_verkey = outbound.reply_from_verkey or target.sender_key
                        self._enqueue(session, outbound)
                        return True
        LOGGER.warning(
            "mpr_acapy: no open socket of connection %s for a message no transport can carry",
            outbound.connection_id,
        )
        return self._core_return_undelivered(outbound)

    def _enqueue(self, session: InboundSession, outbound: OutboundMessage) -> None:
        if not self._writes.get(session.session_id) and session.response_buffer is None:
            session.set_response(outbound)
        else:
            asyncio.get_running_loop().create_task(self._return_later(session, outbound))

    async def _return_later(self, session: InboundSession, outbound: OutboundMessage) -> None:
        try:
            await self.write(session, outbound)
        except SessionGone:
            # What core does with a reply its closed session never sent: other transports.
            self.inbound.return_inbound(session.profile, outbound)

    async def write(self, session: InboundSession, outbound: OutboundMessage, *, sent=False):
        """Hands `outbound` to the session's one-message buffer once it is free; with `sent`,
        returns once the transport wrote it. Writes to one session keep their order."""
        sid = session.session_id
        self._writes[sid] = self._writes.get(sid, 0) + 1
        try:
            await self._write(session, outbound, sent)
        finally:
            self._writes[sid] -= 1
            if not self._writes[sid]:
                del self._writes[sid]
                del self._write_locks[sid]

    async def _write(self, session: InboundSession, outbound: OutboundMessage, sent: bool):
        lock = self._write_locks.setdefault(session.session_id, asyncio.Lock())
        async with lock:
            while session.response_buffer is not None and not session.closed:
                await _buffer_change(session)
            if session.closed or not session.can_respond:
                raise SessionGone()
            session.set_response(outbound)
            while sent and session.response_buffer is outbound and not session.closed:
                await _buffer_change(session)
            if sent and session.response_buffer is outbound:
                raise SessionGone()

    async def reply(self, session, payload: dict, recipient_verkey, mediator_verkey, connection_id):
        await self.write(
            session,
            OutboundMessage(
                payload=json.dumps(payload),
                connection_id=connection_id,
                reply_to_verkey=recipient_verkey,
                reply_from_verkey=mediator_verkey,
            ),
        )

    # -- implicit pickup --------------------------------------------------------------------

    def _maybe_implicit(self, message: InboundMessage) -> None:
        """A mediated recipient that sent anything but Pickup 2.0 on a socket kept open for
        replies (return route "all") gets its messages there: the backlog, then as they come."""
        session = self.session(message.session_id)
        if (
            session is None
            or not session.can_respond
            or session.reply_mode != MessageReceipt.REPLY_MODE_ALL
            or not message.connection_id
            or message.connection_id in self.bindings
            # A SocketDock socket is bound by the frame's answer; the server delivers to it.
            or socketdock_frame(session)
            or "/messagepickup/" in str(message.payload.get("@type", ""))
        ):
            return
        asyncio.get_running_loop().create_task(self._bind_implicit(session, message))

    async def _bind_implicit(self, session: InboundSession, message: InboundMessage) -> None:
        try:
            async with session.profile.session() as storage:
                mediation = await MediationRecord.retrieve_by_connection_id(
                    storage, message.connection_id
                )
        except StorageNotFoundError:
            return
        if (
            mediation.role != MediationRecord.ROLE_SERVER
            or mediation.state != MediationRecord.STATE_GRANTED
            or message.connection_id in self.bindings
            or session.closed
        ):
            return
        try:
            await self.bind(
                Binding(
                    connection_id=message.connection_id,
                    session=session,
                    recipient_verkey=message.receipt.sender_verkey,
                    mediator_verkey=message.receipt.recipient_verkey,
                    pickup=False,
                )
            )
        except (MprError, MprConnectionError) as error:
            LOGGER.warning("mpr: implicit pickup for %s failed: %s", message.connection_id, error)
            await self.unbind(message.connection_id, session.session_id)

    # -- bindings ---------------------------------------------------------------------------

    async def bind(self, binding: Binding) -> None:
        """Binds the connection to `binding.session` here and on the server (which moves what
        the previous binding, on any instance, was given and did not acknowledge)."""
        old = self.bindings.get(binding.connection_id)
        if old is not None and old.worker:
            old.worker.cancel()
        self.bindings[binding.connection_id] = binding
        LOGGER.info(
            "mpr_acapy: %s for %s on session %s",
            "live delivery" if binding.pickup else "implicit pickup",
            binding.connection_id,
            binding.session.session_id,
        )
        self._watch_close(binding.session)
        binding.worker = asyncio.get_running_loop().create_task(self._work(binding))
        if not binding.pickup:
            binding.queue.put_nowait(None)  # the backlog first
        await self.client.add_live_session(binding.connection_id, binding.server_session_id)

    async def unbind(self, connection_id: str, session_id: Optional[str] = None) -> None:
        """Ends the binding (of `session_id` only, when given); the server makes what it pushed
        and nobody acknowledged pending again."""
        binding = self.bindings.get(connection_id)
        if binding is None or (session_id and binding.session.session_id != session_id):
            return
        del self.bindings[connection_id]
        if binding.worker:
            binding.worker.cancel()
        if self.client.live_sessions.get(connection_id) == binding.server_session_id:
            try:
                await self.client.remove_live_session(connection_id)
            except (MprError, MprConnectionError) as error:
                # The server ends it anyway when this instance's socket closes.
                LOGGER.warning("mpr: removeLiveSession %s failed: %s", connection_id, error)

    def _watch_close(self, session: InboundSession) -> None:
        if getattr(session, "_mpr_watched", False):
            return
        session._mpr_watched = True
        core_close = session.close_handler

        def closed(s: InboundSession):
            if core_close:
                core_close(s)
            for binding in [b for b in self.bindings.values() if b.session is s]:
                asyncio.get_running_loop().create_task(
                    self.unbind(binding.connection_id, s.session_id)
                )

        session.close_handler = closed

    def _pushed(self, connection_id: str, messages: list[dict]) -> None:
        binding = self.bindings.get(connection_id)
        if binding is None:
            # Not ours (any more): ending it makes the server give the messages back.
            asyncio.get_running_loop().create_task(self._disown(connection_id))
            return
        binding.queue.put_nowait(messages)

    async def _disown(self, connection_id: str) -> None:
        if connection_id in self.bindings:
            return
        try:
            await self.client.call("removeLiveSession", {"connectionId": connection_id})
        except (MprError, MprConnectionError) as error:
            LOGGER.warning("mpr: removeLiveSession %s failed: %s", connection_id, error)

    async def _work(self, binding: Binding) -> None:
        try:
            while True:
                messages = await binding.queue.get()
                if messages is None:
                    await self._drain_backlog(binding)
                elif binding.pickup:
                    # What came while the previous delivery was out goes as one.
                    while not binding.queue.empty():
                        messages = messages + binding.queue.get_nowait()
                    ids = [m["id"] for m in messages]
                    LOGGER.debug("mpr: delivering %s live", ids)
                    binding.unacked = set(ids)
                    binding.acked.clear()
                    await self.reply(
                        binding.session,
                        delivery(messages),
                        binding.recipient_verkey,
                        binding.mediator_verkey,
                        binding.connection_id,
                    )
                    try:
                        await asyncio.wait_for(binding.acked.wait(), ACK_WAIT_SECONDS)
                    except asyncio.TimeoutError:
                        pass
                else:
                    for message in messages:
                        await self._write_raw(binding, message)
        except SessionGone:
            await self.unbind(binding.connection_id, binding.session.session_id)
        except (MprError, MprConnectionError) as error:
            LOGGER.warning("mpr: delivery to %s stopped: %s", binding.connection_id, error)
            await self.unbind(binding.connection_id, binding.session.session_id)

    async def _drain_backlog(self, binding: Binding) -> None:
        """Implicit pickup: everything queued for the connection, oldest first."""
        while True:
            page = await self.client.take_from_queue(binding.connection_id, limit=20)
            if not page:
                return
            for message in page:
                await self._write_raw(binding, message)

    async def _write_raw(self, binding: Binding, message: dict) -> None:
        await self.write(
            binding.session,
            OutboundMessage(
                payload="",
                enc_payload=json.dumps(message["encryptedMessage"]),
                connection_id=binding.connection_id,
                reply_to_verkey=binding.recipient_verkey,
            ),
            sent=True,
        )
        # Written to the socket: a raw frame has no acknowledgement to wait for.
        await self.client.remove_messages(binding.connection_id, [message["id"]])


async def _buffer_change(session: InboundSession) -> None:
    """Waits for the session's response buffer to change (set, written, or closed)."""
    event = session.response_event
    if event.is_set():
        # Set and not yet cleared by the transport's writer: give it its turn.
        await asyncio.sleep(0.005)
        return
    try:
        await asyncio.wait_for(event.wait(), 0.25)
    except asyncio.TimeoutError:
        pass
