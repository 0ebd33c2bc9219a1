"""A small DIDComm v1 recipient of an ACA-Py mediator, for what a Credo recipient does not show:
the Pickup 2.0 status fields, recipient_key filtering, and messages-received of part of a
delivery. Prints a JSON report of what it saw; tests/e2e/acapy.test.mjs asserts on it.

    python acapy-recipient.py ADMIN_URL HTTP_ENDPOINT

It makes a static connection through the mediator's admin API (no DID exchange needed), asks
mediation and adds two recipient keys over HTTP with return routing, sends forwards to both
keys, and picks up. Run with the ACA-Py venv's python.
"""

import asyncio
import json
import sys
import urllib.error
import urllib.request
import uuid

from aries_askar import Key, KeyAlg, Store

from acapy_agent.askar.didcomm.v1 import pack_message, unpack_message
from acapy_agent.did.did_key import DIDKey
from acapy_agent.wallet.key_type import ED25519
from acapy_agent.wallet.util import bytes_to_b58

PICKUP = "https://didcomm.org/messagepickup/2.0"
MEDIATION = "https://didcomm.org/coordinate-mediation/1.0"


def post(url: str, body: bytes, content_type="application/didcomm-envelope-enc"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"POST {url}: {error.code} {error.read()[:500]!r}") from None


def verkey(key: str) -> str:
    return DIDKey.from_did(key).public_key_b58 if key.startswith("did:key:") else key


class Recipient:
    def __init__(self, admin: str, endpoint: str):
        self.admin, self.endpoint = admin, endpoint
        self.key = Key.generate(KeyAlg.ED25519)
        self.verkey = bytes_to_b58(self.key.get_public_bytes())
        self.sizes = []  # compact JSON bytes of each envelope forwarded

    async def open(self):
        self.store = await Store.provision("sqlite://:memory:", "raw", Store.generate_raw_key())
        async with self.store.session() as session:
            await session.insert_key(self.verkey, self.key)
        # An unqualified DID is the first 16 bytes of the verkey, base58 (what ACA-Py checks).
        their_did = bytes_to_b58(self.key.get_public_bytes()[:16])
        body = json.dumps({"their_did": their_did, "their_verkey": self.verkey, "their_label": "python recipient"})
        _, answer = post(f"{self.admin}/connections/create-static", body.encode(), "application/json")
        static = json.loads(answer)
        self.mediator_verkey = static["my_verkey"]
        self.connection_id = static["record"]["connection_id"]

    async def ask(self, message: dict):
        """Sends `message` with return routing; the unpacked reply, or None."""
        message = {"@id": str(uuid.uuid4()), "~transport": {"return_route": "all"}, **message}
        packed = pack_message([self.mediator_verkey], self.key, json.dumps(message).encode())
        _, answer = post(self.endpoint, packed)
        if not answer:
            return None
        async with self.store.session() as session:
            plain, _, _ = await unpack_message(session, answer)
        return json.loads(plain)

    def forward(self, routing_key: str, recipient: str, content: str) -> int:
        inner = {"@type": "https://didcomm.org/basicmessage/1.0/message", "content": content}
        envelope = json.loads(pack_message([verkey(recipient)], None, json.dumps(inner).encode()))
        self.sizes.append(len(json.dumps(envelope, separators=(",", ":"))))
        forward = {"@type": "https://didcomm.org/routing/1.0/forward", "@id": str(uuid.uuid4()),
                   "to": verkey(recipient), "msg": envelope}
        status, _ = post(self.endpoint, pack_message([verkey(routing_key)], None, json.dumps(forward).encode()))
        return status


def kids(attachment: dict) -> list:
    import base64

    protected = attachment["data"]["json"]["protected"]
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    return [r["header"]["kid"] for r in header["recipients"]]


async def main(admin: str, endpoint: str):
    me = Recipient(admin, endpoint)
    await me.open()
    report = {"connectionId": me.connection_id}
    grant = await me.ask({"@type": f"{MEDIATION}/mediate-request"})
    report["grant"] = grant["@type"]
    routing_key = grant["routing_keys"][0]
    keys = [DIDKey.from_public_key(Key.generate(KeyAlg.ED25519).get_public_bytes(), ED25519).did for _ in range(2)]
    updated = await me.ask({"@type": f"{MEDIATION}/keylist-update",
                            "updates": [{"recipient_key": k, "action": "add"} for k in keys]})
    report["keylistUpdate"] = [u["result"] for u in updated["updated"]]
    report["forwards"] = [me.forward(routing_key, keys[i], f"m{n}") for n, i in enumerate([0, 1, 0, 1, 0])]
    report["keys"] = [verkey(k) for k in keys]
    report["sizes"] = me.sizes
    ask = me.ask
    report["status"] = await ask({"@type": f"{PICKUP}/status-request"})
    report["statusKey1"] = await ask({"@type": f"{PICKUP}/status-request", "recipient_key": keys[1]})
    d1 = await ask({"@type": f"{PICKUP}/delivery-request", "limit": 10, "recipient_key": keys[1]})
    report["deliveryKey1"] = {"type": d1["@type"], "ids": [a["@id"] for a in d1["~attach"]],
                              "kids": [kids(a) for a in d1["~attach"]]}
    # Acknowledge one of the two: the other stays in flight (not pending, not removed).
    report["afterPartial"] = await ask({"@type": f"{PICKUP}/messages-received",
                                        "message_id_list": report["deliveryKey1"]["ids"][:1]})
    d2 = await ask({"@type": f"{PICKUP}/delivery-request", "limit": 2})
    report["deliveryFirstTwo"] = {"ids": [a["@id"] for a in d2["~attach"]], "kids": [kids(a) for a in d2["~attach"]]}
    report["afterTwo"] = await ask({"@type": f"{PICKUP}/messages-received", "message_id_list": report["deliveryFirstTwo"]["ids"]})
    d3 = await ask({"@type": f"{PICKUP}/delivery-request", "limit": 10})
    report["deliveryRest"] = {"ids": [a["@id"] for a in d3["~attach"]], "kids": [kids(a) for a in d3["~attach"]]}
    ids = report["deliveryRest"]["ids"] + report["deliveryKey1"]["ids"][1:]
    report["afterAll"] = await ask({"@type": f"{PICKUP}/messages-received", "message_id_list": ids})
    report["emptyDelivery"] = await ask({"@type": f"{PICKUP}/delivery-request", "limit": 10})
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
