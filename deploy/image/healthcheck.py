"""The image's HEALTHCHECK: exit 0 when the gateway answers ``GET /ready`` with 200.

Standard library only (the slim base has no curl). The URL is
``$CLASP_HEALTHCHECK_URL``, else ``http://127.0.0.1:$CLASP_PORT/ready`` (port 4000).
Python runs it with ``-I`` (isolated) from the Dockerfile: ``PYTHON*`` variables and the
user site are ignored, so nothing outside the image changes what it imports.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = os.environ.get("CLASP_HEALTHCHECK_URL") or f"http://127.0.0.1:{os.environ.get('CLASP_PORT', '4000')}/ready"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=2.5) as response:
            ok = int(response.status) == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"not ready: {url}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
