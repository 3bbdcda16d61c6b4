"""The monitoring host's scrape targets follow the inventory: every app host (its own /metrics,
node and nginx exporters) and every balancer (exporters); a host added to the inventory appears
on the next run, a removed one disappears. Each fleet host lets the monitoring host, and only
it, reach its exporters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from role_helpers import render as render_playbook


def render(tmp: Path, apps: dict[str, str]) -> tuple[dict, dict]:
    hosts = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {
                "app": {"hosts": {name: {"funfleet_host_address": addr} for name, addr in apps.items()}},
                "lb": {"hosts": {"lb-01": {"funfleet_host_address": "10.0.0.2"}}},
                "monitoring": {"hosts": {"mon-01": {"funfleet_host_address": "10.9.0.5"}}},
            },
        }
    }
    tmp.mkdir(parents=True, exist_ok=True)
    inventory = tmp / "hosts.yml"
    inventory.write_text(yaml.safe_dump(hosts))
    out = tmp / "out"
    out.mkdir()
    render_playbook(inventory, "tests/monitoring/render.yml", out)
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    rules = {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}
    return config, rules


def targets(config: dict) -> dict[str, dict[str, str]]:
    """job -> host label -> target."""
    return {
        job["job_name"]: {sc["labels"]["host"]: sc["targets"][0] for sc in job["static_configs"]}
        for job in config["scrape_configs"]
    }


def test_targets_follow_the_inventory(tmp_path):
    config, _ = render(tmp_path / "one", {"app-01": "10.0.0.11", "app-02": "10.0.0.12"})
    jobs = targets(config)
    assert jobs["funfleet_app"] == {"app-01": "10.0.0.11:80", "app-02": "10.0.0.12:80"}
    assert jobs["node"] == {"app-01": "10.0.0.11:9100", "app-02": "10.0.0.12:9100", "lb-01": "10.0.0.2:9100"}
    assert jobs["nginx"] == {"app-01": "10.0.0.11:9113", "app-02": "10.0.0.12:9113", "lb-01": "10.0.0.2:9113"}
    assert config["rule_files"] == ["/etc/prometheus/funfleet-rules.yml"]
    # A host added, another removed: the next run follows.
    config, _ = render(tmp_path / "two", {"app-01": "10.0.0.11", "app-03": "10.0.0.13"})
    jobs = targets(config)
    assert jobs["funfleet_app"] == {"app-01": "10.0.0.11:80", "app-03": "10.0.0.13:80"}
    assert set(jobs["node"]) == {"app-01", "app-03", "lb-01"}


def test_exporters_open_to_the_monitoring_host_only(tmp_path):
    _, rules = render(tmp_path, {"app-01": "10.0.0.11"})
    exporters = [
        {"name": "node-exporter", "port": 9100, "proto": "tcp", "from": ["10.9.0.5"]},
        {"name": "nginx-exporter", "port": 9113, "proto": "tcp", "from": ["10.9.0.5"]},
    ]
    assert rules["app-01"] == [
        {"name": "http-from-lb", "port": 80, "proto": "tcp", "from": ["10.0.0.2"]},
        {"name": "http-from-monitoring", "port": 80, "proto": "tcp", "from": ["10.9.0.5"]},
        *exporters,
    ]
    assert rules["lb-01"] == [
        {"name": "http", "port": 80, "proto": "tcp"},
        # the first balancer is the artifact source: its app hosts fetch wheels and models
        {"name": "artifacts-from-app", "port": 8070, "proto": "tcp", "from": ["10.0.0.11"]},
        *exporters,
    ]
