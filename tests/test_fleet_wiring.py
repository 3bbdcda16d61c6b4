"""Inventory-only changes reach what the roles write: the roles' own templates, rendered through
the fleet plan and playbooks/vars/fleet.yml as the plays wire them (tests/wiring/render.yml),
for an inventory with role parameters set in its group vars, against the same inventory without."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from role_helpers import render as render_playbook

KNOBS = {
    "all": {"funfleet_request_body_mb": 4},
    "app": {
        "uwsgi_processes": 3,
        "nginx_limit_req_rate": 7,
        "exporters_gpu": True,
        "nginx_status_listen": "127.0.0.1:8181",
    },
    "lb": {"lb_next_upstream_tries": 3},
}


def render(tmp: Path, knobs: bool) -> dict[str, dict[str, str]]:
    groups = {
        "app": {
            "hosts": {
                "app1": {"funfleet_host_address": "10.0.1.1"},
                "gpu1": {"funfleet_host_address": "10.0.1.2", "gpus": 2},
            }
        },
        "lb": {"hosts": {"lb1": {"funfleet_host_address": "10.0.0.1"}}},
    }
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": groups,
        }
    }
    if knobs:
        inventory["all"]["vars"].update(KNOBS["all"])
        for group in ("app", "lb"):
            groups[group]["vars"] = KNOBS[group]
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    out = tmp / "out"
    out.mkdir()
    render_playbook(tmp / "hosts.yml", "tests/wiring/render.yml", out)
    return {host.name: {f.name: f.read_text() for f in host.iterdir()} for host in out.iterdir()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, dict[str, str]]:
    return render(tmp_path_factory.mktemp("plain"), knobs=False)


def lines(text: str, start: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(start)]


def test_group_vars_reach_the_rendered_config(plain, tmp_path):
    set_ = render(tmp_path / "knobs", knobs=True)

    # uwsgi_processes: the ini, and the memory check's worker count with it.
    assert lines(plain["app1"]["uwsgi.ini"], "processes") == ["processes = 4"]  # a worker a core (4)
    assert lines(set_["app1"]["uwsgi.ini"], "processes") == ["processes = 3"]
    assert json.loads(set_["app1"]["params.json"])["app_release_workers"] == 3

    # nginx_limit_req_rate on the app hosts (behind a balancer the plan turns it off).
    assert not lines(plain["app1"]["funfleet-http.conf"], "limit_req_zone")
    assert "rate=7r/s" in lines(set_["app1"]["funfleet-http.conf"], "limit_req_zone")[0]
    # The balancer keeps the fleet's edge rate.
    assert "rate=1000r/s" in lines(set_["lb1"]["funfleet-http.conf"], "limit_req_zone")[0]

    # exporters_gpu, and the exporter follows nginx_status_listen.
    plain_params, set_params = json.loads(plain["app1"]["params.json"]), json.loads(set_["app1"]["params.json"])
    assert (plain_params["exporters_gpu"], set_params["exporters_gpu"]) == (False, True)
    assert set_params["exporters_nginx_scrape_uri"] == "http://127.0.0.1:8181/nginx_status"

    # lb_next_upstream_tries: the balancer's site.
    assert lines(plain["lb1"]["funfleet-lb.conf"], "proxy_next_upstream_tries") == ["proxy_next_upstream_tries 2;"]
    assert lines(set_["lb1"]["funfleet-lb.conf"], "proxy_next_upstream_tries") == ["proxy_next_upstream_tries 3;"]

    # A funfleet_* setting in the inventory reaches every hop it is derived for.
    for host in ("app1", "lb1"):
        assert lines(plain[host]["funfleet-listen.conf"], "client_max_body_size") == ["client_max_body_size 8m;"]
        assert lines(set_[host]["funfleet-listen.conf"], "client_max_body_size") == ["client_max_body_size 4m;"]
    assert "FUNFLEET_MAX_CONTENT_LENGTH=4194304" in set_["app1"]["app.env"]


def test_a_gpu_host_keeps_its_gpu_layout_through_the_wiring(plain):
    out = plain
    assert lines(out["gpu1"]["uwsgi.ini"], "processes") == ["processes = 4"]  # 2 workers a GPU x 2
    assert "FUNFLEET_DEVICE=gpu" in out["gpu1"]["app.env"]
    assert "FUNFLEET_GPU_COUNT=2" in out["gpu1"]["app.env"]
    assert json.loads(out["gpu1"]["params.json"])["python_runtime_flavor"] == "gpu"
    assert "FUNFLEET_DEVICE=cpu" in out["app1"]["app.env"]
