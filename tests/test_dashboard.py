"""The Grafana dashboard is importable as is: JSON with a Prometheus datasource input, panels
with unique ids and positions, every query on that datasource. (That its metric names exist in
the real app's and exporters' output is checked in the edge scenario, against Prometheus.)"""

from __future__ import annotations

import json

from role_helpers import ROOT

DASHBOARD = json.loads((ROOT / "files" / "grafana" / "funfleet.json").read_text())


def test_importable_with_a_prometheus_datasource_input():
    assert DASHBOARD["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    assert DASHBOARD["uid"] == "funfleet-fleet"
    assert "id" not in DASHBOARD  # Grafana assigns it on import


def test_panels_are_complete():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"] == panel["datasource"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_it_shows_what_ops_asked_for():
    titles = " | ".join(panel["title"] for panel in DASHBOARD["panels"]).lower()
    wanted_titles = ("requests per second", "errors", "p50 / p99", "readiness", "busy", "batch size", "gpu")
    for wanted in (*wanted_titles, "worker memory"):
        assert wanted in titles, wanted
