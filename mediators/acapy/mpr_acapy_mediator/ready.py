"""The image's health check: GET /invitation on HTTP_PORT answers 200 (the instance is ready)."""

import os
import sys
import urllib.request

try:
    urllib.request.urlopen(f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '3001')}/invitation", timeout=2)
except Exception:
    sys.exit(1)
