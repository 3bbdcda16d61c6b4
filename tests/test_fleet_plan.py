"""The fleet plan (plugins/filter/funfleet_plan.py) on inventories: what each host
gets from the funfleet_* settings and the inventory, that an inventory's role parameter always
wins, that a GPU host is never taken for a CPU host, and that a host reads only what it needs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "funfleet"
_spec = importlib.util.spec_from_file_location("funfleet_plan", ROOT / "plugins" / "filter" / "funfleet_plan.py")
assert _spec
assert _spec.loader
fp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fp)

DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
SETTINGS = {key: DEFAULTS[f"funfleet_{key}"] for key in fp.SETTINGS}
SETTINGS["socket"] = "/run/funfleet/app.sock"  # the default is a template over funfleet_service


def host(address: str, gpus: int | None = 0, cores: int = 4, memory: int = 8192, **inventory: Any) -> dict:
    facts: dict[str, Any] = {"processor_vcpus": cores, "memtotal_mb": memory, "default_ipv4": {"address": address}}
    if gpus is not None:
        facts["ansible_local"] = {"nvidia_gpu": {"count": gpus}}
    return {"funfleet_host_address": address, "ansible_facts": facts, **inventory}


def fleet(apps: int = 2, lbs: int = 1, monitors: int = 1, **per_host: dict) -> tuple[dict, dict]:
    hostvars: dict[str, dict] = {}
    groups: dict[str, list[str]] = {"app": [], "lb": [], "monitoring": []}
    for i in range(1, apps + 1):
        groups["app"].append(f"app{i}")
        hostvars[f"app{i}"] = host(f"10.0.1.{i}")
    for i in range(1, lbs + 1):
        groups["lb"].append(f"lb{i}")
        hostvars[f"lb{i}"] = host(f"10.0.0.{i}", gpus=None)
    for i in range(1, monitors + 1):
        groups["monitoring"].append(f"mon{i}")
        hostvars[f"mon{i}"] = host(f"10.0.9.{i}", gpus=None)
    for name, extra in per_host.items():
        hostvars[name].update(extra)
    return hostvars, groups


def plan(
    hostvars: dict,
    groups: dict,
    name: str,
    reachable: list[str] | None = None,
    selected: list[str] | None = None,
    **settings: Any,
) -> dict:
    return fp.plan(hostvars, groups, name, {**SETTINGS, **settings}, reachable, selected)


def test_every_setting_the_plan_reads_is_a_funfleet_default():
    """fp.SETTINGS lists the funfleet_* settings the plan takes; each has a default and a spec."""
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for key in fp.SETTINGS:
        assert f"funfleet_{key}" in DEFAULTS
        assert f"funfleet_{key}" in specs["plan"]["options"]


def test_a_gpu_host_gets_the_gpu_layout():
    hostvars, groups = fleet(app1=host("10.0.1.1", gpus=4, cores=32, memory=262144))
    p = plan(hostvars, groups, "app1")
    assert p["gpu_count"] == 4
    params = p["params"]
    assert params["uwsgi_gpu_count"] == 4
    assert params["uwsgi_processes"] == params["app_release_workers"] == 8  # funfleet_workers_per_gpu (2) x 4
    assert params["python_runtime_flavor"] == "gpu"
    assert params["exporters_gpu"] is True
    assert params["exporters_gpu_count"] == 4  # what the GPU metrics compare nvidia-smi's count with


def test_a_cpu_host_runs_a_worker_a_core_as_memory_allows():
    hostvars, groups = fleet(
        app1=host("10.0.1.1", cores=16, memory=65536),
        app2=host("10.0.1.2", cores=16, memory=4096),
    )
    assert plan(hostvars, groups, "app1")["params"]["uwsgi_processes"] == 16
    assert plan(hostvars, groups, "app2")["params"]["uwsgi_processes"] == (4096 - 1024) // 768
    hostvars["app2"]["ansible_facts"]["memtotal_mb"] = 512
    small = plan(hostvars, groups, "app2")["params"]
    assert small["uwsgi_processes"] == 1  # at least one
    assert small["python_runtime_flavor"] == "cpu"
    assert small["uwsgi_gpu_count"] == 0
    assert small["exporters_gpu"] is False


def test_an_app_host_without_the_gpu_fact_is_refused_not_taken_for_a_cpu_host():
    hostvars, groups = fleet(app1=host("10.0.1.1", gpus=None))
    with pytest.raises(fp.AnsibleFilterError, match="no GPU fact"):
        plan(hostvars, groups, "app1")
    # Balancers and monitoring hosts have no workers: they need no GPU fact.
    assert plan(hostvars, groups, "lb1")["gpu_count"] == 0
    assert plan(hostvars, groups, "mon1")["gpu_count"] == 0


KNOBS = {
    # Parameters a role README documents, set in the inventory, with a value unlike the plan's own.
    "app1": {
        "uwsgi_processes": 3,
        "app_release_workers": 5,
        "exporters_gpu": True,
        "nginx_limit_req_rate": 7,
        "nginx_large_client_header_buffers": "8 16k",
        "nginx_status_listen": "127.0.0.1:8181",
        "python_runtime_flavor": "gpu",
        "ufw_allow": [{"name": "http", "port": 80, "proto": "tcp"}],
    },
    "lb1": {"lb_next_upstream_tries": 3, "nginx_limit_conn": 9, "lb_backends": {"x": "10.1.1.1"}},
    "mon1": {"monitoring_listen_port": 9999, "monitoring_targets": []},
}


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_a_role_parameter_the_inventory_sets_wins(name):
    hostvars, groups = fleet(**{name: KNOBS[name]})
    params = plan(hostvars, groups, name)["params"]
    for key, value in KNOBS[name].items():
        assert params[key] == value, key


def test_every_parameter_the_plan_derives_yields_to_the_inventory():
    """Not only the listed knobs: whatever the plan derives for any kind of host, the inventory's
    value replaces it (so a role README's variable always takes effect from group_vars)."""
    hostvars, groups = fleet(apps=1, lbs=1, monitors=1)
    for name in ("app1", "lb1", "mon1"):
        derived = plan(hostvars, groups, name)["params"]
        assert derived, name
        sentinel = {
            key: value + 1000 if isinstance(value, int) and not isinstance(value, bool) else f"from-inventory-{key}"
            for key, value in derived.items()
        }
        overridden, groups2 = fleet(apps=1, lbs=1, monitors=1, **{name: sentinel})
        params = plan(overridden, groups2, name)["params"]
        assert params == sentinel, name


def test_derived_values_follow_the_effective_parameter():
    """What one role owns, the others follow, whichever parameter the inventory set."""
    hostvars, groups = fleet(
        app1={
            "nginx_status_listen": "127.0.0.1:8181",
            "uwsgi_processes": 3,
            "uwsgi_socket": "/run/other/app.sock",
            "python_runtime_root": "/srv/runtime",
            "app_release_root": "/srv/releases",
            "nginx_drain_file": "/srv/drained",
            "nginx_client_max_body_size": "16m",
        }
    )
    params = plan(hostvars, groups, "app1")["params"]
    assert params["exporters_nginx_scrape_uri"] == "http://127.0.0.1:8181/nginx_status"
    assert params["app_release_workers"] == 3
    assert params["nginx_upstream_socket"] == "/run/other/app.sock"
    assert params["uwsgi_venv"] == "/srv/runtime/venv"
    assert (params["uwsgi_app_dir"], params["uwsgi_model_dir"]) == (
        "/srv/releases/current/app",
        "/srv/releases/current/model",
    )
    assert params["uwsgi_drain_file"] == "/srv/drained"
    assert params["uwsgi_app_max_content_length"] == 16 * 1048576


def test_scrape_targets_carry_each_hosts_own_ports():
    """An exporter port set for some hosts only is scraped there, the fleet's elsewhere."""
    hostvars, groups = fleet(apps=2, app2={"exporters_node_port": 9200, "exporters_nginx_port": 9213})
    targets = {t["name"]: t for t in plan(hostvars, groups, "mon1")["params"]["monitoring_targets"]}
    assert (targets["app1"]["node_port"], targets["app1"]["nginx_port"]) == (9100, 9113)
    assert (targets["app2"]["node_port"], targets["app2"]["nginx_port"]) == (9200, 9213)
    rules = {r["name"]: r["port"] for r in plan(hostvars, groups, "app2")["params"]["ufw_allow"]}
    assert (rules["node-exporter"], rules["nginx-exporter"]) == (9200, 9213)


@pytest.mark.parametrize(("size", "value"), [("8m", 8388608), ("512k", 524288), ("1G", 1073741824), ("1000", 1000)])
def test_nginx_sizes(size, value):
    assert fp.nginx_size(size) == value
    assert fp.nginx_size("lots") == 0


def test_a_gpu_fact_that_could_not_count_is_refused():
    """The fact never fails: a host whose lspci failed and whose driver is not loaded says 0 GPUs
    with its errors, and that is not taken for a CPU host."""
    unread = host("10.0.1.1")
    unread["ansible_facts"]["ansible_local"]["nvidia_gpu"] = {"count": 0, "source": "none", "errors": ["lspci failed"]}
    hostvars, groups = fleet(app1=unread)
    with pytest.raises(fp.AnsibleFilterError, match="could not count"):
        plan(hostvars, groups, "app1")


def test_the_drain_threshold_is_the_fewest_tries_any_balancer_makes():
    hostvars, groups = fleet(apps=4, lbs=2, lb2={"lb_next_upstream_tries": 4})
    assert plan(hostvars, groups, "app1", lb_tries=3)["drain_tries"] == 3
    hostvars, groups = fleet(apps=4, lbs=2, lb2={"lb_next_upstream_tries": 1})
    assert plan(hostvars, groups, "app1")["drain_tries"] == 1


def test_the_edge_holds_the_limits_and_the_hosts_behind_take_more():
    hostvars, groups = fleet()
    app, lb = plan(hostvars, groups, "app1"), plan(hostvars, groups, "lb1")
    assert (app["edge"], lb["edge"]) == (False, True)
    assert lb["params"]["nginx_large_client_header_buffers"] == "2 8k"
    assert app["params"]["nginx_large_client_header_buffers"] == "4 9k"
    assert (lb["params"]["nginx_limit_req_rate"], app["params"]["nginx_limit_req_rate"]) == (1000, 0)
    assert (lb["params"]["nginx_limit_conn"], app["params"]["nginx_limit_conn"]) == (64, 0)
    assert app["params"]["nginx_client_max_body_size"] == lb["params"]["nginx_client_max_body_size"] == "8m"
    assert app["params"]["uwsgi_app_max_content_length"] == 8 * 1048576
    # No balancer: the app host is the edge.
    hostvars, groups = fleet(apps=1, lbs=0)
    alone = plan(hostvars, groups, "app1")
    assert alone["edge"] is True
    assert alone["params"]["nginx_large_client_header_buffers"] == "2 8k"


def test_firewall_rules_by_kind():
    hostvars, groups = fleet(monitors=1)
    exporters = [
        {"name": "node-exporter", "port": 9100, "proto": "tcp", "from": ["10.0.9.1"]},
        {"name": "nginx-exporter", "port": 9113, "proto": "tcp", "from": ["10.0.9.1"]},
    ]
    assert plan(hostvars, groups, "app1")["params"]["ufw_allow"] == [
        {"name": "http-from-lb", "port": 80, "proto": "tcp", "from": ["10.0.0.1"]},
        {"name": "http-from-monitoring", "port": 80, "proto": "tcp", "from": ["10.0.9.1"]},
        *exporters,
    ]
    assert plan(hostvars, groups, "lb1")["params"]["ufw_allow"] == [
        {"name": "http", "port": 80, "proto": "tcp"},
        {"name": "artifacts-from-app", "port": 8070, "proto": "tcp", "from": ["10.0.1.1", "10.0.1.2"]},
        *exporters,
    ]
    assert plan(hostvars, groups, "mon1")["params"]["ufw_allow"] == [
        {"name": "prometheus", "port": 9090, "proto": "tcp", "from": []}
    ]
    # A lone app host with a certificate serves clients HTTP and HTTPS; nothing monitors it.
    hostvars, groups = fleet(apps=1, lbs=0, monitors=0, app1={"nginx_tls_certificate": "/etc/ssl/x.pem"})
    assert plan(hostvars, groups, "app1")["params"]["ufw_allow"] == [
        {"name": "http", "port": 80, "proto": "tcp"},
        {"name": "https", "port": 443, "proto": "tcp"},
    ]
    assert plan(hostvars, groups, "app1")["monitored"] is False


def test_a_host_of_two_kinds_gets_the_rules_of_both_once():
    hostvars, groups = fleet(apps=1, lbs=1, monitors=0)
    groups["monitoring"] = ["lb1"]
    rules = plan(hostvars, groups, "lb1")["params"]["ufw_allow"]
    assert [r["name"] for r in rules] == ["http", "artifacts-from-app", "node-exporter", "nginx-exporter", "prometheus"]
    assert len(rules) == len({repr(r) for r in rules})


def test_backends_and_scrape_targets():
    hostvars, groups = fleet(apps=3, lbs=1, monitors=1)
    assert plan(hostvars, groups, "lb1")["params"]["lb_backends"] == {
        "app1": "10.0.1.1",
        "app2": "10.0.1.2",
        "app3": "10.0.1.3",
    }
    targets = plan(hostvars, groups, "mon1")["params"]["monitoring_targets"]
    assert [(t["name"], t["kind"], t["scheme"]) for t in targets] == [
        ("app1", "app", "http"),
        ("app2", "app", "http"),
        ("app3", "app", "http"),
        ("lb1", "lb", "http"),
    ]


def test_the_first_balancer_reached_is_the_artifact_source():
    """App hosts fetch from the first balancer the run reaches, each role from its own folder; only
    that balancer opens the port, to the app hosts only."""
    hostvars, groups = fleet(apps=2, lbs=2, monitors=1)
    app = plan(hostvars, groups, "app1", reachable=None)
    assert app["artifact_source"] == "lb1"
    assert {k: v for k, v in app["params"].items() if "artifact" in k} == {
        "python_runtime_artifact_source": "lb1",
        "python_runtime_artifact_dir": "/srv/funfleet-artifacts/wheels",
        "python_runtime_artifact_url": "http://10.0.0.1:8070/wheels",
        "app_release_artifact_source": "lb1",
        "app_release_artifact_dir": "/srv/funfleet-artifacts/models",
        "app_release_artifact_url": "http://10.0.0.1:8070/models",
    }
    lb1, lb2 = plan(hostvars, groups, "lb1"), plan(hostvars, groups, "lb2")
    assert (lb1["params"]["artifacts_port"], lb1["params"]["artifacts_root"]) == (8070, "/srv/funfleet-artifacts")
    assert lb1["params"]["artifacts_allow"] == ["10.0.1.1", "10.0.1.2"]  # nginx's allow list, beside UFW's
    assert "artifacts_port" not in lb2["params"]
    assert "artifacts_allow" not in lb2["params"]
    assert [r for r in lb2["params"]["ufw_allow"] if r["name"].startswith("artifacts")] == []
    assert app["artifact_note"] == ""
    # lb1 in the run but unreachable: the next one reached, and the run says so.
    everyone = ["lb1", "lb2", "mon1", "app1", "app2"]
    reached = ["lb2", "mon1", "app1", "app2"]
    app = plan(hostvars, groups, "app1", reachable=reached, selected=everyone)
    assert app["params"]["app_release_artifact_url"] == "http://10.0.0.2:8070/models"
    assert app["artifact_note"] == "lb1 cannot be reached: lb2 serves the fleet's artifacts this run"
    assert plan(hostvars, groups, "lb2", reachable=reached, selected=everyone)["params"]["artifacts_port"] == 8070


def test_a_source_left_out_by_limit_is_not_replaced_by_another_balancer():
    """--limit lb2,app2 must not make lb2 a second source (its own site, full copies of every
    artifact): the controller sends the hosts their copies this run, and the run says so."""
    hostvars, groups = fleet(apps=2, lbs=2, monitors=0)
    limited = ["lb2", "app2"]
    app = plan(hostvars, groups, "app2", reachable=limited, selected=limited)
    assert app["artifact_source"] == ""
    assert app["params"]["python_runtime_artifact_url"] == ""
    assert app["artifact_note"].startswith("lb1, the fleet's artifact source, is left out by --limit: ")
    assert "artifacts_port" not in plan(hostvars, groups, "lb2", reachable=limited, selected=limited)["params"]


def test_a_named_source_the_run_does_not_reach_stops_it():
    hostvars, groups = fleet(apps=1, lbs=2, monitors=0)
    with pytest.raises(fp.AnsibleFilterError, match="funfleet_artifact_source=lb2: lb2 is not in this run"):
        plan(hostvars, groups, "app1", ["lb1", "app1"], ["lb1", "lb2", "app1"], artifact_source="lb2")


def test_without_a_balancer_reached_or_by_choice_the_controller_sends_each_host_its_copy():
    hostvars, groups = fleet(apps=2, lbs=1, monitors=0)
    none_reached = plan(hostvars, groups, "app1", reachable=["app1", "app2"], selected=["lb1", "app1", "app2"])
    assert none_reached["artifact_note"].startswith("no balancer can be reached (lb1): the controller sends")
    by_choice = plan(hostvars, groups, "app1", artifact_source="controller")
    hostvars, groups = fleet(apps=2, lbs=0, monitors=0)
    no_balancer = plan(hostvars, groups, "app1")
    for app in (none_reached, by_choice, no_balancer):
        assert app["artifact_source"] == ""
        assert app["params"]["python_runtime_artifact_source"] == app["params"]["app_release_artifact_url"] == ""


def test_a_named_artifact_source_must_be_a_balancer_and_its_own_port_is_the_one_used():
    hostvars, groups = fleet(apps=1, lbs=2, monitors=1, lb2={"artifacts_port": 9000})
    app = plan(hostvars, groups, "app1", artifact_source="lb2")
    assert app["params"]["python_runtime_artifact_url"] == "http://10.0.0.2:9000/wheels"
    lb2 = plan(hostvars, groups, "lb2", artifact_source="lb2")
    rule = {"name": "artifacts-from-app", "port": 9000, "proto": "tcp", "from": ["10.0.1.1"]}
    assert rule in lb2["params"]["ufw_allow"]
    with pytest.raises(fp.AnsibleFilterError, match="funfleet_artifact_source='mon1'"):
        plan(hostvars, groups, "app1", artifact_source="mon1")


def test_missing_settings_are_named():
    hostvars, groups = fleet()
    settings = dict(SETTINGS)
    del settings["lb_tries"]
    with pytest.raises(fp.AnsibleFilterError, match="lb_tries"):
        fp.plan(hostvars, groups, "app1", settings)


class Counting(Mapping):
    """hostvars that count which hosts' variables a plan reads."""

    def __init__(self, data: dict) -> None:
        self.data, self.read = data, set()

    def __getitem__(self, name: str) -> dict:
        self.read.add(name)
        return self.data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_an_app_hosts_plan_reads_no_other_app_host():
    """The work per app host stays flat as the fleet grows: it reads the balancers and monitoring
    hosts, never the other app hosts (a balancer reads every app host, which it must)."""
    hostvars, groups = fleet(apps=50, lbs=2, monitors=1)
    counting = Counting(hostvars)
    plan(counting, groups, "app7")
    assert counting.read == {"app7", "lb1", "lb2", "mon1"}


def test_the_gpu_health_gate_has_one_path_for_its_writer_and_its_reader():
    """The GPU collector writes the gate, the host's nginx reads it: one path, the writer's, on a
    GPU host even where the inventory moves it; CPU app hosts' nginx reads the setting's (no
    writer: it never closes), balancers have none. The reset codes reach the alert too."""
    hostvars, groups = fleet(
        apps=3,
        app1={"ansible_facts": {**host("10.0.1.1")["ansible_facts"], "ansible_local": {"nvidia_gpu": {"count": 2}}}},
        app3={
            "ansible_facts": {**host("10.0.1.3")["ansible_facts"], "ansible_local": {"nvidia_gpu": {"count": 1}}},
            "exporters_gpu_gate_file": "/srv/health/gpu.json",
        },
    )
    gpu, cpu, moved = (plan(hostvars, groups, name)["params"] for name in ("app1", "app2", "app3"))
    default = SETTINGS["gpu_gate_file"]
    assert (gpu["exporters_gpu_gate_file"], gpu["nginx_health_gate_file"]) == (default, default)
    assert (cpu["exporters_gpu_gate_file"], cpu["nginx_health_gate_file"]) == ("", default)
    assert (moved["exporters_gpu_gate_file"], moved["nginx_health_gate_file"]) == ("/srv/health/gpu.json",) * 2
    assert plan(hostvars, groups, "lb1")["params"]["nginx_health_gate_file"] == ""
    assert gpu["exporters_gpu_reset_xids"] == list(SETTINGS["gpu_reset_xids"])
    assert plan(hostvars, groups, "mon1")["params"]["monitoring_gpu_xid_reset"] == list(SETTINGS["gpu_reset_xids"])
