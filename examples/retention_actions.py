"""A retention team's consumer: act on each churn alert once, across crashes and restarts.

    STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
        python examples/retention_actions.py --group retention --log out/actions.jsonl

Alerts come from ``streamscore.client.iter_alerts``: typed ``ChurnAlert`` records, repeated
ids skipped, and each offset committed only after the loop body below has returned. That is
at-least-once: after a crash, alerts handled since the last commit come again. What makes
the *action* happen once is the action log: one line per alert acted on, keyed by the
alert's ``id``, written (and fsynced) as the action itself, and read back at start. An alert
whose id is in the log is skipped, whatever the offsets say.

Here the action is the log line (a stand-in for a CRM's queue). With a real system, pass the
alert id as its idempotency key, or log first and reconcile; either way the id is the key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streamscore.client import ChurnAlert, iter_alerts


class ActionLog:
    """Alert ids already acted on, backed by an append-only JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            data = path.read_bytes()
            complete, _, torn = data.rpartition(b"\n")
            if torn:  # a line cut by a crash mid-write: that action did not happen
                with path.open("r+b") as fp:
                    fp.truncate(len(complete) + 1 if complete else 0)
            for line in complete.splitlines():
                self.done.add(orjson.loads(line)["alert_id"])
        self._fp = path.open("ab")

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self.done

    def record(self, entry: dict[str, object]) -> None:
        """Append one action durably."""
        self._fp.write(orjson.dumps(entry) + b"\n")
        self._fp.flush()
        os.fsync(self._fp.fileno())
        self.done.add(str(entry["alert_id"]))

    def close(self) -> None:
        self._fp.close()


def act(alert: ChurnAlert, log: ActionLog) -> None:
    """The recommended action for one alert: here, an entry in the action log."""
    log.record(
        {
            "alert_id": alert.id,
            "user_id": alert.user_id,
            "action": alert.recommended_action,
            "churn_probability": alert.churn_probability,
            "predicted_value": alert.predicted_value,
            "because": [r.feature for r in alert.reasons],
            "acted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )
    why = ", ".join(f"{r.feature}={r.value:g}" for r in alert.reasons)
    print(
        f"{alert.recommended_action:<20} {alert.user_id}  churn {alert.churn_probability:.2f}  "
        f"value {alert.predicted_value:,.2f}  ({why})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", default="retention-actions", help="consumer group")
    p.add_argument("--log", type=Path, default=Path("actions.jsonl"), help="action log")
    p.add_argument(
        "--from-beginning", action="store_true", help="a new group starts at the oldest alert"
    )
    p.add_argument(
        "--idle-exit", type=float, default=None, help="exit after this many quiet seconds"
    )
    p.add_argument(
        "--delay", type=float, default=0.0, help="seconds each action takes (a slow CRM)"
    )
    args = p.parse_args(argv)
    log = ActionLog(args.log)
    skipped = 0
    try:
        with iter_alerts(
            args.group, from_beginning=args.from_beginning, stop_when_idle_s=args.idle_exit
        ) as alerts:
            for alert in alerts:
                if alert.id in log:
                    skipped += 1
                    print(
                        f"already acted on alert {alert.id} ({alert.user_id}); skipped", flush=True
                    )
                    continue
                time.sleep(args.delay)
                act(alert, log)
    except KeyboardInterrupt:
        pass
    finally:
        log.close()
    print(
        f"{len(log.done)} alerts acted on in {args.log}; {skipped} seen again and skipped",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
