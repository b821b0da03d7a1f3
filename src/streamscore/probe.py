"""``python -m streamscore.probe [healthz|readyz]``: the container health check.

Exit 0 when the scorer's probe answers 200, 1 otherwise, with its JSON reason on stderr.
Standard library only and no settings model to load, so it costs little every few seconds;
the port is ``STREAMSCORE_METRICS_PORT`` (default 9108), always asked on 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    """Ask one probe; the exit code is its verdict."""
    path = argv[0] if argv else "healthz"
    if path not in {"healthz", "readyz"}:
        print("usage: python -m streamscore.probe [healthz|readyz]", file=sys.stderr)
        return 2
    port = os.environ.get("STREAMSCORE_METRICS_PORT", "9108")
    url = f"http://127.0.0.1:{port}/{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
