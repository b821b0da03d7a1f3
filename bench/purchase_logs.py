"""Purchase logs for the quality benchmark: real ones (CDNOW) and harder simulated shops.

A log is a list of transactions ``(customer, day, amount)``; the benchmark turns it into
streamscore events (one purchase event per customer and day, same-day orders summed, as the
BTYD literature counts transactions) and into per-cutoff summaries for the baselines.

The CDNOW logs are read from the ``lifetimes`` package, which ships them (a dev dependency):
``CDNOW_sample.txt`` (2,357 customers, 6,919 purchases, 1997-01 to 1998-06; Fader, Hardie &
Lee 2005) and ``CDNOW_master.txt`` (the full 23,570-customer cohort it was drawn from).
Both are the public data sets Bruce Hardie distributes with the BG/NBD paper.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

DAY = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Transaction:
    """One customer's purchases on one day."""

    customer: str
    day: dt.date
    amount: float


@dataclass(frozen=True, slots=True)
class PurchaseLog:
    """A named purchase log and where it came from."""

    name: str
    source: str
    transactions: list[Transaction]
    extra_events: list[dict[str, object]] | None = None  # non-purchase events, if any

    @property
    def first_day(self) -> dt.date:
        return min(t.day for t in self.transactions)

    @property
    def last_day(self) -> dt.date:
        return max(t.day for t in self.transactions)


def _merge_days(rows: Iterator[tuple[str, dt.date, float]]) -> list[Transaction]:
    by_day: dict[tuple[str, dt.date], float] = defaultdict(float)
    for customer, day, amount in rows:
        by_day[(customer, day)] += amount
    return [Transaction(c, d, round(a, 2)) for (c, d), a in sorted(by_day.items())]


def from_csv(path: Path) -> PurchaseLog:
    """A shop's own log: a CSV with a header naming ``user_id``, ``date`` and ``amount``.

    ``date`` is an ISO date or timestamp (only the day is kept, as the baselines count
    days); other columns are ignored, so an orders export usually works as it is.
    """
    import csv

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"user_id", "date", "amount"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(
                f"{path}: the header lacks {sorted(missing)}; it needs user_id,date,amount"
            )
        rows = [
            (r["user_id"], dt.date.fromisoformat(r["date"][:10]), float(r["amount"]))
            for r in reader
        ]
    if not rows:
        raise SystemExit(f"{path}: no rows")
    return PurchaseLog(path.stem, str(path), _merge_days(iter(rows)))


def cdnow(which: str = "sample") -> PurchaseLog:
    """The CDNOW sample (2,357 customers) or master (23,570) log from ``lifetimes``."""
    name = {"sample": "CDNOW_sample.txt", "master": "CDNOW_master.txt"}[which]
    spec = importlib.util.find_spec("lifetimes")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the CDNOW logs ship with the 'lifetimes' package: pip install -e '.[dev]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    text = (folder / "datasets" / name).read_text()

    def rows() -> Iterator[tuple[str, dt.date, float]]:
        for line in text.splitlines():
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue
            # sample: master id, sample id, date, CDs, dollars; master: id, date, CDs, dollars
            customer, date, dollars = (
                (parts[1], parts[2], parts[4])
                if which == "sample"
                else (
                    parts[0],
                    parts[1],
                    parts[3],
                )
            )
            yield customer, dt.datetime.strptime(date, "%Y%m%d").date(), float(dollars)

    return PurchaseLog(f"cdnow-{which}", f"lifetimes/datasets/{name}", _merge_days(rows()))


def _season(day: dt.date, amplitude: float) -> float:
    """A yearly cycle peaking in late November (a shop's Q4)."""
    phase = (day.timetuple().tm_yday - 330) / 365.25 * 2 * math.pi
    return 1.0 + amplitude * math.cos(phase)


def simulated_cohort(
    *,
    customers: int = 3000,
    days: int = 540,
    seed: int = 7,
    seasonality: float = 0.5,
    start: dt.date = dt.date(2024, 1, 1),
    acquisition_days: int = 90,
) -> PurchaseLog:
    """One acquisition cohort with seasonal buying, customers that do not follow BG/NBD.

    Each customer joins within the first ``acquisition_days`` with a first purchase, then buys
    on a renewal process whose gaps are Weibull-distributed (regular buyers, not Poisson), with
    a rate that follows the season, and leaves after a lifetime in *days* drawn from a
    lognormal (not after a purchase, as BG/NBD assumes). Spend per order is lognormal around a
    per-customer level that drifts down with tenure.
    """
    rng = random.Random(seed)
    end = start + dt.timedelta(days=days)
    rows: list[tuple[str, dt.date, float]] = []
    for i in range(customers):
        cid = f"c{i:05d}"
        day = start + dt.timedelta(days=rng.randrange(acquisition_days))
        mean_gap = math.exp(rng.gauss(math.log(45.0), 0.8))
        shape = rng.uniform(0.8, 3.0)
        lifetime = math.exp(rng.gauss(math.log(240.0), 1.0))
        level = math.exp(rng.gauss(math.log(40.0), 0.6))
        born = day
        while day < end and (day - born).days <= lifetime:
            tenure_factor = 1.0 - 0.3 * min((day - born).days / 365.0, 1.0)
            amount = level * tenure_factor * math.exp(rng.gauss(0.0, 0.4))
            rows.append((cid, day, max(round(amount, 2), 0.5)))
            scale = mean_gap / math.gamma(1.0 + 1.0 / shape)
            gap = rng.weibullvariate(scale, shape) / _season(day, seasonality)
            day += dt.timedelta(days=max(1, round(gap)))
    return PurchaseLog(
        f"sim-cohort-seasonal-{seed}",
        f"bench/purchase_logs.py simulated_cohort(customers={customers}, seed={seed})",
        _merge_days(iter(rows)),
    )


def simulated_purchase_only(*, users: int = 3000, days: int = 365, seed: int = 5) -> PurchaseLog:
    """The project's own simulated shop with every non-purchase event dropped.

    Arrivals are spread over the year (an open population, unlike CDNOW's single cohort);
    only the purchases survive, as in a shop that exports its order log alone.
    """
    from streamscore.simulator import ShopSimulator, SimulationConfig

    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=seed))
    rows: list[tuple[str, dt.date, float]] = []
    for event in sim.events():
        if not isinstance(event, dict) or event.get("type") != "purchase":
            continue
        ts = event["ts"]
        when = (
            dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
            if isinstance(ts, int)
            else dt.datetime.fromisoformat(str(ts))
        )
        rows.append((str(event["user_id"]), when.date(), float(event["amount"])))  # type: ignore[arg-type]
    return PurchaseLog(
        f"sim-purchase-only-{seed}",
        f"streamscore simulator (users={users}, days={days}, seed={seed}), purchases only",
        _merge_days(iter(rows)),
    )


def write_events(log: PurchaseLog, path: Path) -> int:
    """The log as streamscore events (JSONL): one purchase per customer and day, at noon UTC."""
    n = 0
    with path.open("wb") as fp:
        for t in log.transactions:
            ts = dt.datetime.combine(t.day, dt.time(12), dt.UTC)
            fp.write(
                orjson.dumps(
                    {
                        "event_id": f"{t.customer}-{t.day:%Y%m%d}",
                        "user_id": t.customer,
                        "type": "purchase",
                        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "amount": t.amount,
                    }
                )
                + b"\n"
            )
            n += 1
    return n
