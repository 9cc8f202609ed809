#!/usr/bin/env python3
"""Generates tests/fixtures/svix_vectors.json with the official svix library.

rebound's verifier and signer are tested against these, so interop with the
library Resend's webhooks come from (and the one forwarding receivers use)
is checked by the real implementation, not only by our own signer.

    pip install svix && python3 scripts/svix-vectors.py > tests/fixtures/svix_vectors.json
"""
import base64
import json
import os
from datetime import datetime, timezone

import svix
from svix.webhooks import Webhook

cases = []
bodies = [
    '{"type":"email.bounced","created_at":"2026-11-22T23:41:12.126Z","data":{"email_id":"56761188-7520-42d8-8898-ff6fc54ce618","to":["delivered@resend.dev"],"bounce":{"type":"Permanent","subType":"General"}}}',
    '{"test": 2432232314}',
    '{"type":"email.delivered","data":{"subject":"Bonjour \u00e9\u00e8 \u2014 \U0001F4E7"}}',
    '{}',
]
for i, body in enumerate(bodies):
    key = os.urandom(24 + 8 * i)
    secret = "whsec_" + base64.b64encode(key).decode()
    msg_id = "msg_" + base64.b32encode(os.urandom(15)).decode().lower().rstrip("=")
    ts = 1_700_000_000 + 12_345 * i
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body)
    # The library itself must accept what it signed (with its clock pinned).
    cases.append({"secret": secret, "msg_id": msg_id, "timestamp": ts, "body": body, "signature": sig})

print(json.dumps({"generator": f"svix (python) {svix.__version__}", "cases": cases}, indent=2, ensure_ascii=False))
