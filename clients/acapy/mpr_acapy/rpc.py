"""An asyncio JSON-RPC client of the mpr server (docs/api.md), as clients/credo's MprConnection.

One WebSocket; after it drops, reconnects forever with jittered backoff and re-adds every live
session it registered (the server ends a socket's sessions when it closes). A `ping` heartbeat
finds half-open sockets. Server errors raise MprError; no answer raises MprConnectionError.
"""

import asyncio
import json
import logging
import random
from typing import Any, Awaitable, Callable, Optional

import aiohttp

LOGGER = logging.getLogger(__name__)


class MprError(Exception):
    """The server answered with a JSON-RPC error (e.g. -32000: storage unavailable, not stored)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"mpr error {code}: {message}")
        self.code = code


class MprConnectionError(Exception):
    """No answer: not connected, the socket dropped, or the call timed out (outcome unknown)."""


MessagesCallback = Callable[[str, list[dict]], Awaitable[None]]


class MprClient:
    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        call_timeout: float = 5.0,
        reconnect_interval: float = 0.5,
        max_reconnect_interval: float = 30.0,
        heartbeat_interval: float = 10.0,
    ):
        self.url = url
        self.token = token
        self.call_timeout = call_timeout
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max(max_reconnect_interval, reconnect_interval)
        self.heartbeat_interval = heartbeat_interval
        # connectionId -> sessionId of every live session added and not removed.
        self.live_sessions: dict[str, str] = {}
        self.on_messages: Optional[Callable[[str, list[dict]], None]] = None
        self._ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self._http: Optional[aiohttp.ClientSession] = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._runner: Optional[asyncio.Task] = None
        self._connected = asyncio.Event()
        self._stopped = False

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """Opens the socket and returns once it is open, or, when this first attempt fails,
        logs why and keeps trying in the background (calls fail until it opens)."""
        self._http = aiohttp.ClientSession()
        try:
            ws = await self._http.ws_connect(self.url, headers=self._headers(), heartbeat=None)
        except Exception as error:
            LOGGER.error("mpr: cannot connect to %s (%s); retrying", self.url, error)
            ws = None
        self._runner = asyncio.get_running_loop().create_task(self._run(ws))
        if ws is not None:
            await self._connected.wait()

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def close(self) -> None:
        self._stopped = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
        if self._http is not None:
            await self._http.close()

    # -- methods -----------------------------------------------------------------------------

    async def add_message(
        self,
        connection_id: str,
        recipient_dids: list[str],
        payload: dict,
        push_token: Optional[dict] = None,
    ) -> str:
        """push_token: the server's pushNotificationToken ({"type": "fcm", "token": ...}), to wake
        the recipient while it has no live session."""
        params = {
            "connectionId": connection_id,
            "recipientDids": recipient_dids,
            "payload": payload,
        }
        if push_token:
            params["pushNotificationToken"] = push_token
        result = await self.call("addMessage", params)
        if not isinstance(result, dict) or not isinstance(result.get("messageId"), str):
            raise MprConnectionError(f"addMessage: unexpected result {result!r}")
        return result["messageId"]

    async def take_from_queue(
        self,
        connection_id: str,
        *,
        recipient_did: Optional[str] = None,
        limit: Optional[int] = None,
        delete: bool = False,
    ) -> list[dict]:
        params = {"connectionId": connection_id, "limit": limit, "recipientDid": recipient_did}
        if delete:
            params["deleteMessages"] = True
        result = await self.call("takeFromQueue", params)
        if not isinstance(result, list):
            raise MprConnectionError(f"takeFromQueue: unexpected result {result!r}")
        return result

    async def count(self, connection_id: str, recipient_did: Optional[str] = None) -> int:
        result = await self.call(
            "getAvailableMessageCount",
            {"connectionId": connection_id, "recipientDid": recipient_did},
        )
        if not isinstance(result, int) or isinstance(result, bool):
            raise MprConnectionError(f"getAvailableMessageCount: unexpected result {result!r}")
        return result

    async def queue_status(self, connection_id: str, recipient_did: Optional[str] = None) -> dict:
        """getQueueStatus: messageCount, totalBytes, oldestReceivedAt, newestReceivedAt; from a
        server without it (-32601) only messageCount."""
        params = {"connectionId": connection_id, "recipientDid": recipient_did}
        try:
            result = await self.call("getQueueStatus", params)
        except MprError as error:
            if error.code != -32601:
                raise
            return {"messageCount": await self.count(connection_id, recipient_did)}
        if not isinstance(result, dict) or not isinstance(result.get("messageCount"), int):
            raise MprConnectionError(f"getQueueStatus: unexpected result {result!r}")
        return result

    async def remove_messages(self, connection_id: str, message_ids: list[str]) -> None:
        await self.call("removeMessages", {"connectionId": connection_id, "messageIds": message_ids})

    async def add_live_session(self, connection_id: str, session_id: str) -> bool:
        """Remembered before the call, so a session added while disconnected is bound on
        reconnect; a server refusal forgets it."""
        self.live_sessions[connection_id] = session_id
        try:
            return bool(
                await self.call(
                    "addLiveSession", {"connectionId": connection_id, "sessionId": session_id}
                )
            )
        except MprError:
            if self.live_sessions.get(connection_id) == session_id:
                del self.live_sessions[connection_id]
            raise

    async def live_session(self, connection_id: str) -> bool:
        """getLiveSession: whether the connection is bound to a live peer, on any instance."""
        result = await self.call("getLiveSession", {"connectionId": connection_id})
        if not isinstance(result, bool):
            raise MprConnectionError(f"getLiveSession: unexpected result {result!r}")
        return result

    async def remove_live_session(self, connection_id: str) -> bool:
        self.live_sessions.pop(connection_id, None)
        return bool(await self.call("removeLiveSession", {"connectionId": connection_id}))

    async def call(self, method: str, params: Optional[dict] = None) -> Any:
        ws = self._ws
        if ws is None or ws.closed:
            raise MprConnectionError(f"mpr {method}: not connected to {self.url}")
        self._next_id += 1
        call_id = self._next_id
        frame = {"jsonrpc": "2.0", "method": method, "id": call_id}
        if params is not None:
            frame["params"] = {k: v for k, v in params.items() if v is not None}
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            await ws.send_str(json.dumps(frame, separators=(",", ":")))
            return await asyncio.wait_for(future, self.call_timeout)
        except asyncio.TimeoutError:
            raise MprConnectionError(
                f"mpr {method}: no reply within {self.call_timeout} s"
            ) from None
        except ConnectionError as error:
            raise MprConnectionError(f"mpr {method}: {error}") from None
        finally:
            self._pending.pop(call_id, None)

    # -- transport ---------------------------------------------------------------------------

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        failed_attempts = 0
        while not self._stopped:
            if ws is None:
                try:
                    ws = await self._http.ws_connect(
                        self.url, headers=self._headers(), heartbeat=None
                    )
                except Exception as error:
                    base = min(
                        self.reconnect_interval * 2**failed_attempts, self.max_reconnect_interval
                    )
                    failed_attempts = min(failed_attempts + 1, 30)
                    LOGGER.debug("mpr reconnect to %s failed (%s)", self.url, error)
                    # Jitter: the mediators of a restarted server do not all come back at once.
                    await asyncio.sleep(base * (0.8 + random.random() * 0.4))
                    continue
                LOGGER.info("mpr reconnected to %s", self.url)
            failed_attempts = 0
            self._ws = ws
            reader = asyncio.get_running_loop().create_task(self._read(ws))
            heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(ws))
            readd = asyncio.get_running_loop().create_task(self._after_open())
            await reader
            heartbeat.cancel()
            readd.cancel()
            self._ws = None
            self._connected.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(MprConnectionError("mpr connection lost"))
            if not self._stopped:
                LOGGER.warning("mpr connection to %s lost; reconnecting", self.url)
            ws = None

    async def _after_open(self) -> None:
        for connection_id, session_id in list(self.live_sessions.items()):
            if self.live_sessions.get(connection_id) != session_id:
                continue
            try:
                await self.call(
                    "addLiveSession", {"connectionId": connection_id, "sessionId": session_id}
                )
            except (MprError, MprConnectionError) as error:
                # Kept: tried again after the next reconnect.
                LOGGER.warning("mpr: re-adding live session %s failed: %s", connection_id, error)
        self._connected.set()

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self.heartbeat_interval <= 0:
            return
        while not ws.closed:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.call("ping")
            except MprConnectionError:
                LOGGER.warning("mpr: no answer to a heartbeat ping; reconnecting")
                await ws.close()
                return
            except MprError:
                pass

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            try:
                message = json.loads(frame.data)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "id" in message and message["id"] in self._pending:
                future = self._pending[message["id"]]
                if future.done():
                    continue
                error = message.get("error")
                if error is not None:
                    future.set_exception(
                        MprError(error.get("code", 0), str(error.get("message", error)))
                    )
                else:
                    future.set_result(message.get("result"))
            elif message.get("method") == "messagesReceived":
                params = message.get("params") or {}
                connection_id = params.get("connectionId")
                messages = params.get("messages")
                if not isinstance(connection_id, str) or not isinstance(messages, list):
                    LOGGER.error("mpr: malformed messagesReceived push dropped")
                elif self.on_messages is None:
                    # Not removed: the server hands them out again after its visibility timeout.
                    LOGGER.warning("mpr: push for %s but nobody takes it", connection_id)
                else:
                    self.on_messages(connection_id, messages)
