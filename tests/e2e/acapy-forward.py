"""Posts one forward to a mediator's HTTP endpoint and prints the answer's status code.

    python acapy-forward.py ENDPOINT ROUTING_KEY RECIPIENT_KEY

Keys as did:key or base58. The forward is anoncrypted to ROUTING_KEY (the mediator's routing
key), its `to` is RECIPIENT_KEY, and it carries a basic message anoncrypted to RECIPIENT_KEY:
what a DIDComm v1 sender sends a mediated recipient. Run with the ACA-Py venv's python.
"""

import json
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

from acapy_agent.askar.didcomm.v1 import pack_message
from acapy_agent.did.did_key import DIDKey


def verkey(key: str) -> str:
    return DIDKey.from_did(key).public_key_b58 if key.startswith("did:key:") else key


def main(endpoint: str, routing_key: str, recipient_key: str) -> None:
    inner = {
        "@type": "https://didcomm.org/basicmessage/1.0/message",
        "@id": str(uuid.uuid4()),
        "content": "through a forward",
        "sent_time": datetime.now(timezone.utc).isoformat(),
    }
    envelope = json.loads(pack_message([verkey(recipient_key)], None, json.dumps(inner).encode()))
    forward = {
        "@type": "https://didcomm.org/routing/1.0/forward",
        "@id": str(uuid.uuid4()),
        "to": verkey(recipient_key),
        "msg": envelope,
    }
    body = pack_message([verkey(routing_key)], None, json.dumps(forward).encode())
    request = urllib.request.Request(
        endpoint, data=body, headers={"Content-Type": "application/didcomm-envelope-enc"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status)
    except urllib.error.HTTPError as error:
        print(error.code)


if __name__ == "__main__":
    main(*sys.argv[1:4])
