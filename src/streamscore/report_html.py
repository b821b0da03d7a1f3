"""``report.html``: the plots a data scientist looks at first, in one self-contained file.

The page carries ``report.json`` inline and draws SVG with a short inline script
(``report_assets/report.js``, styles in ``report.css``): no CDN, no network, opens from a file
anywhere. Plots: ROC curve, reliability diagram (calibration),
ROC AUC over time, the value model's gain curve and lift by decile, and the users per segment
and lifecycle stage. Each drawn series carries ``data-series`` and ``data-points`` so a test
in a real browser can tell that the script ran and drew the data.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

import orjson

from streamscore.core.timeutil import iso


def _asset(name: str) -> str:
    return (resources.files("streamscore") / "report_assets" / name).read_text(encoding="utf-8")


def _f(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _facts(rep: dict[str, Any]) -> list[tuple[str, str]]:
    churn, value = rep.get("churn", {}), rep.get("value", {})
    facts = [
        ("input records", f"{rep.get('records', 0):,}"),
        ("events per second", f"{rep.get('events_per_second', 0):,.0f}"),
        ("users scored", f"{rep.get('users_scored', 0):,}"),
        (
            "churn labels",
            f"{churn.get('labels', 0):,} (base rate {_f(churn.get('base_rate'), '.1%')})",
        ),
        ("churn ROC AUC", _f(churn.get("roc_auc"), ".3f")),
        ("churn log loss", _f(churn.get("log_loss"), ".3f")),
        (
            "value MAE",
            f"{_f(value.get('mae'), ',.2f')} (naive {_f(value.get('naive_mae'), ',.2f')})",
        ),
        ("value normalised Gini", _f(value.get("normalised_gini"), ".3f")),
    ]
    truth = rep.get("ground_truth")
    if truth:
        facts.append(
            (
                "simulator oracle AUC",
                f"{_f(truth.get('oracle_auc'), '.3f')} (model on the same labels "
                f"{_f(truth.get('model_auc'), '.3f')})",
            )
        )
    outputs = rep.get("outputs", {})
    facts.append(("outputs", ", ".join(f"{k} {v:,}" for k, v in outputs.items()) or "none"))
    dead = rep.get("dead_letters", {})
    facts.append(("dead letters", ", ".join(f"{k} {v:,}" for k, v in dead.items()) or "none"))
    facts.append(("late events", f"{rep.get('late_events', 0):,} (behind the watermark)"))
    return facts


_CARDS = (
    (
        "plot-roc",
        "ROC curve",
        "Each resolved label scored with the prediction stored before it "
        "was learnt (progressive validation); dashed: chance.",
    ),
    (
        "plot-calibration",
        "Reliability diagram",
        "Observed churn rate against the mean predicted "
        "probability, per tenth of the probability; dot size: labels in the bucket.",
    ),
    (
        "plot-auc-time",
        "ROC AUC over time",
        "Blue: AUC per block of consecutive labels, by when "
        "the predictions were made; orange: the block's churn rate.",
    ),
    (
        "plot-gain",
        "Value: gain curve",
        "Share of the realised spend captured by the customers "
        "the value model ranks highest; green: the best possible order; dashed: random.",
    ),
    (
        "plot-lift",
        "Value: lift by decile",
        "Mean realised (blue) and predicted (orange) spend per decile of the prediction.",
    ),
    ("plot-segments", "Users per segment", "RFM segment of every user's final score."),
    ("plot-lifecycles", "Users per lifecycle stage", "Lifecycle stage of every final score."),
)


def render_report(rep: dict[str, Any], *, title: str) -> str:
    """The whole page for one report."""
    data = orjson.dumps(rep).decode().replace("</", "<\\/")
    as_of = rep.get("as_of")
    when = iso(as_of) if isinstance(as_of, int) and as_of > 0 else "n/a"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _facts(rep)
    )
    cards = "".join(
        f'<div class="card"><h2>{html.escape(name)}</h2><div id="{pid}"></div>'
        f"<p>{html.escape(note)}</p></div>"
        for pid, name, note in _CARDS
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>streamscore {html.escape(title)} report</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_asset('report.css')}</style></head><body>"
        f"<h1>streamscore {html.escape(title)} report</h1>"
        f'<div class="sub">final scores as of {html.escape(when)} · model '
        f"{html.escape(str(rep.get('model_version', '')))}</div>"
        f'<div class="grid"><div class="card"><h2>Run</h2><table class="kv">{rows}</table></div>'
        f"{cards}</div>"
        '<div id="errors"></div>'
        f'<script type="application/json" id="report-data">{data}</script>'
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )
