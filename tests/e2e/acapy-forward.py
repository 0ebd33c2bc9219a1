"""Posts forwards to a mediator's HTTP endpoint and prints the answers' status codes.

    python acapy-forward.py ENDPOINT ROUTING_KEY RECIPIENT_KEY [COUNT CONCURRENCY]

With COUNT, packs COUNT forwards first, then posts them from CONCURRENCY threads and prints
`{"statuses": {code: n}, "seconds": s}` (the forward rate of docs/performance.md).

Keys as did:key or base58. The forward is anoncrypted to ROUTING_KEY (the mediator's routing
key), its `to` is RECIPIENT_KEY, and it carries a basic message anoncrypted to RECIPIENT_KEY:
what a DIDComm v1 sender sends a mediated recipient. Run with the ACA-Py venv's python.
"""

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from acapy_agent.askar.didcomm.v1 import pack_message
from acapy_agent.did.did_key import DIDKey


def verkey(key: str) -> str:
    return DIDKey.from_did(key).public_key_b58 if key.startswith("did:key:") else key


def packed_forward(routing_key: str, recipient_key: str) -> bytes:
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
    return pack_message([verkey(routing_key)], None, json.dumps(forward).encode())


def post(endpoint: str, body: bytes) -> int:
    request = urllib.request.Request(
        endpoint, data=body, headers={"Content-Type": "application/didcomm-envelope-enc"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main(endpoint: str, routing_key: str, recipient_key: str, count=None, concurrency="1"):
    if count is None:
        print(post(endpoint, packed_forward(routing_key, recipient_key)))
        return
    bodies = [packed_forward(routing_key, recipient_key) for _ in range(int(count))]
    start = time.monotonic()
    with ThreadPoolExecutor(int(concurrency)) as pool:
        statuses = list(pool.map(lambda body: post(endpoint, body), bodies))
    seconds = time.monotonic() - start
    print(json.dumps({"statuses": dict(Counter(statuses)), "seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
