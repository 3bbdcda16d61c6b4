"""The fleet plan: what one host needs from the inventory, worked out in one place.

``hostvars | funfleet_plan(groups, inventory_hostname, settings)`` answers, for one host, its
kinds (app host, balancer, monitoring host), whether it is the edge, its GPU count (from the
nvidia role's persistent local fact, never assumed), its workers, its firewall rules, the
balancers' backends, the monitoring hosts' scrape targets, and every role parameter the plays
pass (``params``: ``uwsgi_processes``, ``nginx_limit_req_rate``, ``lb_backends``, ...).

The one rule for a role parameter: a value the inventory (or ``-e``) sets for this host wins;
otherwise the plan derives it from the ``funfleet_*`` settings. ``hostvars[host]`` holds what
the inventory, facts and ``-e`` say of a host but no play variables, so the plan can tell an
operator's ``lb_next_upstream_tries: 3`` in group_vars from its own wiring. Values derived from
a parameter follow its effective value (the exporter scrapes the ``nginx_status_listen`` the
host's nginx really has; the drain threshold is the balancers' real tries).

Each host works out only its own plan: an app host reads the balancers' and monitoring hosts'
addresses, a balancer the app hosts', so the work per host stays flat as the fleet grows.
Pure Python over mappings, tested on inventories by tests/test_fleet_plan.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - the tests run with ansible installed

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        pass


# The funfleet_* settings the plan reads (roles/funfleet/defaults/main.yml), without the prefix.
SETTINGS = (
    "lb_group",
    "app_group",
    "monitoring_group",
    "monitoring_networks",
    "root",
    "service",
    "user",
    "group",
    "socket",
    "drain_file",
    "drain_timeout",
    "gpu_gate_file",
    "gpu_reset_xids",
    "app_firewall",
    "lb_firewall",
    "lb_tries",
    "node_exporter_port",
    "nginx_exporter_port",
    "prometheus_port",
    "https_port",
    "nginx_status_listen",
    "edge_request_rate",
    "edge_request_burst",
    "edge_connections",
    "edge_retry_after",
    "request_body_mb",
    "request_line_kb",
    "request_headers_kb",
    "workers_per_gpu",
    "worker_memory_mb",
    "memory_reserved_mb",
    "artifact_source",
    "artifact_port",
    "artifact_root",
)

Vars = Mapping[str, Any]


def address(name: str, hv: Vars) -> str:
    """Where the other fleet hosts reach this one (the funfleet role sets it on every host)."""
    for key in ("funfleet_host_address", "funfleet_address"):
        if hv.get(key):
            return str(hv[key])
    ipv4 = hv.get("ansible_facts", {}).get("default_ipv4") or {}
    if ipv4.get("address"):
        return str(ipv4["address"])
    return str(hv["ansible_host"]) if "ansible_host" in hv else name


def gpu_count(name: str, hv: Vars) -> int:
    """The GPUs the nvidia role's local fact (ansible_local.nvidia_gpu) found on an app host."""
    local = hv.get("ansible_facts", {}).get("ansible_local") or {}
    if "nvidia_gpu" not in local:
        raise AnsibleFilterError(
            f"{name}: no GPU fact (ansible_local.nvidia_gpu). The plays install it before the plan "
            "(playbooks/facts.yml runs the nvidia role's fact.yml on every app host, under every tag); "
            "a play of your own must do the same rather than assume the host has no GPU."
        )
    fact = local["nvidia_gpu"]
    try:
        count = int(fact["count"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"{name}: the GPU fact has no usable count: {fact!r}") from exc
    # The fact never fails: a host it could not read (lspci failing, no /proc/driver/nvidia) says
    # 0 with its errors, and 0 read that way is not a CPU host.
    if count == 0 and (fact.get("source") == "none" or fact.get("errors")):
        raise AnsibleFilterError(f"{name}: the GPU fact could not count the GPUs ({fact.get('errors') or 'no lspci'})")
    return count


def cpu_workers(facts: Vars, s: Vars) -> int:
    """One worker per core, no more than fit in memory, at least one."""
    cores = int(facts.get("processor_vcpus") or facts.get("processor_cores") or 1)
    fit = (int(facts.get("memtotal_mb", 0)) - int(s["memory_reserved_mb"])) // int(s["worker_memory_mb"])
    return max(1, min(cores, fit))


def nginx_size(value: object) -> int:
    """Bytes in an nginx size ("8m", "512k", "1g", "1048576"); 0 where nginx sets no limit or the
    value is not a size."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", str(value))
    if not match:
        return 0
    return int(match[1]) * {"": 1, "k": 1024, "m": 1048576, "g": 1073741824}[match[2].lower()]


def serves_tls(hv: Vars) -> bool:
    return any(key in hv and hv[key] for key in ("nginx_tls_certificate", "nginx_tls_certificate_content"))


def header_buffers(s: Vars, edge: bool) -> str:
    """The edge holds the fleet's limits; an app host behind balancers takes twice the buffers and
    1 KiB more a line (the balancer adds X-Forwarded-*, X-Real-IP and X-Request-Id, and re-sends a
    bare-LF header line "a:" as "a: " with CRLF), so nothing the edge passed is refused further in."""
    line, headers = int(s["request_line_kb"]), int(s["request_headers_kb"])
    return f"{headers // line * (1 if edge else 2)} {line + (0 if edge else 1)}k"


class _Plan:
    """One host's plan, worked out kind by kind (app host, balancer, monitoring host)."""

    def __init__(
        self,
        hostvars: Mapping[str, Vars],
        groups: Mapping[str, list],
        host: str,
        settings: Vars,
        *,
        reachable: list[str] | None = None,
        selected: list[str] | None = None,
    ) -> None:
        s = self.s = dict(settings)
        missing = [key for key in SETTINGS if key not in s]
        if missing:
            raise AnsibleFilterError(f"funfleet_plan: settings missing: {', '.join(missing)}")
        self.hostvars, self.host, self.hv = hostvars, host, hostvars[host]
        self.lbs, self.apps, self.monitors = (
            list(groups.get(s[group]) or []) for group in ("lb_group", "app_group", "monitoring_group")
        )
        self.kinds = [
            k for k, hosts in (("app", self.apps), ("lb", self.lbs), ("monitoring", self.monitors)) if host in hosts
        ]
        self.edge = host in self.lbs or not self.lbs
        sources = [*s["monitoring_networks"], *(address(m, hostvars[m]) for m in self.monitors)]
        self.monitoring_sources = list(dict.fromkeys(sources))
        self.gpus = gpu_count(host, self.hv) if "app" in self.kinds else 0
        self.source, self.source_note = artifact_source(self.lbs, s, reachable, selected)
        self.params: dict[str, Any] = {}
        self.firewall: list[dict] = []

    def pick(self, name: str, derived: Any) -> Any:
        """The inventory's value for this host, else the derived one; either way, the plan's."""
        self.params[name] = self.hv.get(name, derived)
        return self.params[name]

    def drain_tries(self) -> int:
        """The balancers' tries decide which batches a rollout may drain: the fewest any makes."""
        tries = (int(self.hostvars[lb].get("lb_next_upstream_tries", self.s["lb_tries"])) for lb in self.lbs)
        return min(tries, default=int(self.s["lb_tries"]))

    def client_rules(self) -> list[dict]:
        rules = [{"name": "http", "port": 80, "proto": "tcp"}]
        if serves_tls(self.hv):
            rules.append({"name": "https", "port": self.params["nginx_https_port"], "proto": "tcp"})
        return rules

    def nginx(self) -> None:
        s, edge = self.s, self.edge
        self.pick("nginx_https_port", int(s["https_port"]))
        status_listen = self.pick("nginx_status_listen", s["nginx_status_listen"])
        self.pick("nginx_client_max_body_size", f"{int(s['request_body_mb'])}m")
        self.pick("nginx_large_client_header_buffers", header_buffers(s, edge))
        self.pick("nginx_ops_allow", self.monitoring_sources)
        self.pick("nginx_limit_req_rate", int(s["edge_request_rate"]) if edge else 0)
        self.pick("nginx_limit_req_burst", int(s["edge_request_burst"]))
        self.pick("nginx_limit_conn", int(s["edge_connections"]) if edge else 0)
        self.pick("nginx_limit_retry_after", int(s["edge_retry_after"]))
        self.pick("nginx_upstream_socket", s["socket"])  # an app host's follows its uwsgi_socket (app())
        self.pick("nginx_drain_file", s["drain_file"])
        self.pick("nginx_drain_timeout", int(s["drain_timeout"]))
        self.pick("exporters_node_port", int(s["node_exporter_port"]))
        self.pick("exporters_nginx_port", int(s["nginx_exporter_port"]))
        self.pick("exporters_nginx_scrape_uri", f"http://{status_listen}/nginx_status")
        self.pick("exporters_gpu", self.gpus > 0)
        self.pick("exporters_gpu_count", self.gpus)
        self.pick("exporters_gpu_reset_xids", [int(code) for code in s["gpu_reset_xids"]])
        # A GPU host's own health verdict, which its nginx reads (app()): one path, one writer.
        self.pick("exporters_gpu_gate_file", s["gpu_gate_file"] if self.gpus > 0 else "")
        self.pick("nginx_health_gate_file", "")

    def app(self) -> None:
        """After nginx(): what one role owns, the others follow (the socket, the roots, the drain
        file, the body limit), whichever of them the inventory set."""
        s, gpus = self.s, self.gpus
        cpu = cpu_workers(self.hv.get("ansible_facts", {}), s)
        workers = self.pick("uwsgi_processes", gpus * int(s["workers_per_gpu"]) if gpus > 0 else cpu)
        self.pick("uwsgi_gpu_count", gpus)
        runtime_root = self.pick("python_runtime_root", s["root"])
        self.pick("python_runtime_flavor", "gpu" if gpus > 0 else "cpu")
        release_root = self.pick("app_release_root", s["root"])
        self.pick("app_release_workers", workers)
        self.pick("uwsgi_service_name", s["service"])
        self.pick("uwsgi_user", s["user"])
        self.pick("uwsgi_group", s["group"])
        socket = self.pick("uwsgi_socket", s["socket"])
        self.pick("nginx_upstream_socket", socket)
        self.pick("uwsgi_venv", f"{runtime_root}/venv")
        self.pick("uwsgi_app_dir", f"{release_root}/current/app")
        self.pick("uwsgi_model_dir", f"{release_root}/current/model")
        self.pick("uwsgi_drain_file", self.params["nginx_drain_file"])
        self.pick("nginx_health_gate_file", self.params["exporters_gpu_gate_file"] or s["gpu_gate_file"])
        body = nginx_size(self.params["nginx_client_max_body_size"]) or int(s["request_body_mb"]) * 1048576
        self.pick("uwsgi_app_max_content_length", body)
        self.artifact_params()
        if s["app_firewall"]:
            self.firewall += list(s["app_firewall"])
        elif self.lbs:
            # Behind balancers: HTTP from them, and from the monitoring hosts (/metrics, /metadata).
            balancers = [address(lb, self.hostvars[lb]) for lb in self.lbs]
            self.firewall += [
                {"name": "http-from-lb", "port": 80, "proto": "tcp", "from": balancers},
                {"name": "http-from-monitoring", "port": 80, "proto": "tcp", "from": self.monitoring_sources},
            ]
        else:
            self.firewall += self.client_rules()

    def artifact_params(self) -> None:
        """Where an app host fetches the wheels and model files: its fleet's artifact source,
        each role from its own folder there, or (no source) the controller, as before."""
        url = root = ""
        if self.source:
            # The source's own port and folder: an inventory's artifacts_port for it wins there too.
            hv = self.hostvars[self.source]
            url = f"http://{address(self.source, hv)}:{int(hv.get('artifacts_port', self.s['artifact_port']))}"
            root = str(hv.get("artifacts_root", self.s["artifact_root"]))
        for role, folder in (("python_runtime", "wheels"), ("app_release", "models")):
            self.pick(f"{role}_artifact_source", self.source)
            self.pick(f"{role}_artifact_dir", f"{root}/{folder}" if self.source else "")
            self.pick(f"{role}_artifact_url", f"{url}/{folder}" if self.source else "")

    def artifacts(self) -> None:
        """The artifact source: its folder and port, open to the app hosts only."""
        port = self.pick("artifacts_port", int(self.s["artifact_port"]))
        self.pick("artifacts_root", self.s["artifact_root"])
        apps = [address(app, self.hostvars[app]) for app in self.apps]
        # Twice: UFW, and nginx's own allow list, so a firewall turned off or skipped
        # (--skip-tags firewall) still lists nothing to anyone else.
        self.pick("artifacts_allow", apps)
        self.firewall.append({"name": "artifacts-from-app", "port": port, "proto": "tcp", "from": apps})

    def lb(self) -> None:
        self.pick("lb_next_upstream_tries", int(self.s["lb_tries"]))
        self.pick("lb_backends", {app: address(app, self.hostvars[app]) for app in self.apps})
        self.firewall += list(self.s["lb_firewall"]) if self.s["lb_firewall"] else self.client_rules()

    def exporters(self) -> None:
        if self.monitoring_sources:
            for name, param in (("node-exporter", "exporters_node_port"), ("nginx-exporter", "exporters_nginx_port")):
                rule = {"name": name, "port": self.params[param], "proto": "tcp", "from": self.monitoring_sources}
                self.firewall.append(rule)

    def monitoring(self) -> None:
        s = self.s
        port = self.pick("monitoring_listen_port", int(s["prometheus_port"]))
        self.pick("monitoring_node_port", int(s["node_exporter_port"]))
        self.pick("monitoring_nginx_port", int(s["nginx_exporter_port"]))
        self.pick("monitoring_targets", scrape_targets(self.hostvars, self.apps, self.lbs, s))
        self.pick("monitoring_gpu_xid_reset", [int(code) for code in s["gpu_reset_xids"]])
        self.firewall.append(
            {"name": "prometheus", "port": port, "proto": "tcp", "from": list(s["monitoring_networks"])}
        )

    def build(self) -> dict:
        fleet_host = "app" in self.kinds or "lb" in self.kinds
        if fleet_host:
            self.nginx()
        if "app" in self.kinds:
            self.app()
        if "lb" in self.kinds:
            self.lb()
        if self.source == self.host:
            self.artifacts()
        if fleet_host:
            self.exporters()
        if "monitoring" in self.kinds:
            self.monitoring()
        unique: list[dict] = []
        for rule in self.firewall:
            if rule not in unique:
                unique.append(rule)
        self.pick("ufw_allow", unique)
        return {
            "host": self.host,
            "address": address(self.host, self.hv),
            "kinds": self.kinds,
            "edge": self.edge,
            "gpu_count": self.gpus,
            "monitored": bool(self.monitoring_sources),
            "drain_tries": self.drain_tries(),
            "artifact_source": self.source,
            "artifact_note": self.source_note,
            "params": self.params,
        }


def artifact_source(
    lbs: list[str], s: Vars, reachable: list[str] | None, selected: list[str] | None = None
) -> tuple[str, str]:
    """The host the app hosts fetch artifacts from, and a line for the operator where the run does
    not use the usual one. "auto": the first balancer, or the next where the first is unreachable
    (in the run's selection but not reached). A balancer that --limit leaves out ends the search:
    the controller then sends each host its own copy, rather than making another balancer a
    source behind the operator's back. A balancer's name: that one, and a run that does not reach
    it stops. "controller": none. "" means the controller sends each host its own copy."""
    choice = str(s["artifact_source"])
    if choice == "controller" or not lbs:
        return "", ""
    if choice != "auto" and choice not in lbs:
        raise AnsibleFilterError(
            f"funfleet_artifact_source={choice!r}: auto, controller, or one of the balancers "
            f"({', '.join(lbs) or 'none'})"
        )
    if reachable is None:
        return (lbs[0] if choice == "auto" else choice), ""
    fallback = "the controller sends each app host its own copy of the wheels and model files this run"
    if choice != "auto":
        if choice in reachable:
            return choice, ""
        raise AnsibleFilterError(
            f"funfleet_artifact_source={choice}: {choice} is not in this run (unreachable, or left out by "
            "--limit). Bring it back or add it to --limit, or set funfleet_artifact_source to auto or controller."
        )
    skipped = []
    for lb in lbs:
        if lb in reachable:
            if skipped:
                return lb, f"{', '.join(skipped)} cannot be reached: {lb} serves the fleet's artifacts this run"
            return lb, ""
        if selected is not None and lb not in selected:
            return "", f"{lb}, the fleet's artifact source, is left out by --limit: {fallback}"
        skipped.append(lb)
    return "", f"no balancer can be reached ({', '.join(skipped)}): {fallback}"


def plan(  # noqa: PLR0917 - a Jinja filter's arguments are positional
    hostvars: Mapping[str, Vars],
    groups: Mapping[str, list],
    host: str,
    settings: Vars,
    reachable: list[str] | None = None,
    selected: list[str] | None = None,
) -> dict:
    """``hostvars | funfleet_plan(groups, inventory_hostname, settings, ansible_play_hosts,
    ansible_play_hosts_all)``: one host's plan. ``reachable`` (the hosts the run reaches) and
    ``selected`` (those it was asked to run on, within --limit) pick the artifact source."""
    return _Plan(hostvars, groups, host, settings, reachable=reachable, selected=selected).build()


def scrape_targets(hostvars: Mapping[str, Vars], apps: list[str], lbs: list[str], s: Vars) -> list[dict]:
    """Every app host and balancer, each with the ports its own nginx and exporters listen on (an
    inventory's exporters_*_port or nginx_https_port for that host, else the fleet's); an app host
    that is its own edge with TLS is scraped over HTTPS."""

    def target(name: str, kind: str) -> dict:
        hv = hostvars[name]
        tls = kind == "app" and not lbs and serves_tls(hv)
        return {
            "name": name,
            "address": address(name, hv),
            "kind": kind,
            "scheme": "https" if tls else "http",
            "port": int(hv.get("nginx_https_port", s["https_port"])) if tls else 80,
            "node_port": int(hv.get("exporters_node_port", s["node_exporter_port"])),
            "nginx_port": int(hv.get("exporters_nginx_port", s["nginx_exporter_port"])),
        }

    return [target(app, "app") for app in apps] + [target(lb, "lb") for lb in lbs]


class FilterModule:
    def filters(self) -> dict[str, Callable]:
        return {"funfleet_plan": plan}
