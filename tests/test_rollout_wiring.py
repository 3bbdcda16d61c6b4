"""The rolling plays' batch decision (playbooks/vars/fleet.yml), rendered by a real play with
`serial`: a batch is drained only while hosts outside it are in service and the batch plus the
hosts already out (drained by an operator or an interrupted run, or unreachable) are fewer than a
balancer's tries; otherwise it chain-reloads in service. A host already drained restarts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from role_helpers import render

UNGATED = {"gated": False, "gate_reason": ""}
SERVING = {"drained": False, "by": "", "reason": "", **UNGATED, "out_of_rotation": False}
BY_HAND = {"drained": True, "by": "operator", "reason": "disk swap", **UNGATED, "out_of_rotation": True}
LEFT_BY_A_RUN = {"drained": True, "by": "rollout", "reason": "deploy", **UNGATED, "out_of_rotation": True}
SICK_GPU = {"drained": False, "by": "", "reason": "", "gated": True, "gate_reason": "XID 79", "out_of_rotation": True}


def decide(tmp: Path, states: dict[str, dict | None], tries: int = 2, batch: int = 1, lbs: int = 1) -> dict:
    hosts = {}
    for name, state in states.items():
        hosts[name] = {"funfleet_plan": {"drain_tries": tries}}
        if state is not None:  # None: the host could not be reached, so its state is unknown
            hosts[name]["nginx_drain_state"] = state
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {"app": {"hosts": hosts}, "lb": {"hosts": {f"lb{i}": {} for i in range(lbs)}}},
        }
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    out = tmp / "out"
    out.mkdir()
    render(tmp / "hosts.yml", "tests/wiring/batches.yml", out, "-e", f"batch_size={batch}")
    return {name: json.loads((out / f"{name}.json").read_text()) for name in states}


def test_a_fleet_in_service_drains_one_host_at_a_time(tmp_path):
    got = decide(tmp_path, {"app1": SERVING, "app2": SERVING, "app3": SERVING})
    assert {h: (d["drain_batch"], d["reload"]) for h, d in got.items()} == dict.fromkeys(
        ["app1", "app2", "app3"], (True, "restart")
    )


def test_a_host_drained_by_hand_is_counted_out_of_service(tmp_path):
    """Two hosts, one drained by hand: the other is the only one serving, so it chain-reloads in
    service; the drained one restarts out of rotation (and stays drained: the post_tasks)."""
    got = decide(tmp_path, {"app1": SERVING, "app2": BY_HAND})
    assert got["app1"] == {"drain_batch": False, "reload": "chain", "out_of_service": 1}
    assert got["app2"]["reload"] == "restart"


def test_a_host_left_drained_by_an_interrupted_run_or_unreachable_counts_too(tmp_path):
    got = decide(tmp_path, {"app1": SERVING, "app2": LEFT_BY_A_RUN, "app3": None}, tries=3)
    # app1: app2 and app3 are out, none outside the batch serves: no drain.
    assert got["app1"] == {"drain_batch": False, "reload": "chain", "out_of_service": 2}
    # app2 is already out of rotation: it restarts whatever the batch decision.
    assert got["app2"]["reload"] == "restart"


def test_a_host_held_out_by_its_health_gate_counts_out_of_service_and_restarts(tmp_path):
    """A sick GPU's host serves nothing: the others count it out, as a host drained by hand, and it
    restarts out of rotation (its gate, not the rollout, decides when it serves again)."""
    got = decide(tmp_path, {"app1": SERVING, "app2": SICK_GPU})
    assert got["app1"] == {"drain_batch": False, "reload": "chain", "out_of_service": 1}
    assert got["app2"]["reload"] == "restart"
    got = decide(tmp_path / "3", {"app1": SERVING, "app2": SERVING, "app3": SICK_GPU}, tries=3)
    assert [got[h]["drain_batch"] for h in ("app1", "app2")] == [True, True]


def test_hosts_out_of_service_use_up_the_balancers_tries(tmp_path):
    """Four hosts, one drained by hand, tries 2: draining another would let a request meet two
    drained hosts and run out of tries, so no batch is drained."""
    got = decide(tmp_path, {"app1": SERVING, "app2": SERVING, "app3": SERVING, "app4": BY_HAND})
    assert [got[h]["drain_batch"] for h in ("app1", "app2", "app3")] == [False, False, False]
    got = decide(tmp_path / "3", {"app1": SERVING, "app2": SERVING, "app3": SERVING, "app4": BY_HAND}, tries=3)
    assert [got[h]["drain_batch"] for h in ("app1", "app2", "app3")] == [True, True, True]


def test_no_balancer_no_drain(tmp_path):
    got = decide(tmp_path, {"app1": SERVING, "app2": SERVING}, lbs=0)
    assert {d["reload"] for d in got.values()} == {"chain"}


def test_a_batch_of_every_host_stays_in_service(tmp_path):
    """serial 100%: no host outside the batch could take its requests, so none is drained and each
    chain-reloads; with three hosts and tries 3, a batch of two is drained while the third serves."""
    got = decide(tmp_path, {"app1": SERVING, "app2": SERVING}, batch=2)
    assert {h: (d["drain_batch"], d["reload"]) for h, d in got.items()} == dict.fromkeys(
        ["app1", "app2"], (False, "chain")
    )
    got = decide(tmp_path / "3", {"app1": SERVING, "app2": SERVING, "app3": SERVING}, tries=3, batch=2)
    assert [got[h]["drain_batch"] for h in ("app1", "app2", "app3")] == [True, True, True]


def test_a_conditional_drain_is_an_include_so_its_wait_for_requests_in_flight_runs():
    """On an import_role, Ansible checks the condition again before each task of drain.yml, and
    drain.yml's own record (drained: true) then skips its wait for the requests in flight: the
    switch could cut them. A drain under a condition must be an include_role (checked once)."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for playbook in sorted((root / "playbooks").glob("*.yml")):
        for play in yaml.safe_load(playbook.read_text()) or []:
            for section in ("pre_tasks", "tasks", "post_tasks"):
                for task in play.get(section) or []:
                    imported = task.get("ansible.builtin.import_role") or {}
                    if imported.get("tasks_from") == "drain.yml" and "when" in task:
                        found.append(f"{playbook.name}: {task['name']}")
    assert found == []


def test_deploys_and_rollbacks_put_back_only_the_hosts_a_rollout_drained():
    """An operator's drain stays, and so does a driver upgrade's (gpu_upgrade.yml stops, drained,
    for the host's reboot): a deploy or rollback in between must not put back a host whose new
    driver is not loaded yet. gpu_upgrade.yml itself ends its own drain and a rollout's. A host
    that is not drained is put back for all its requests (a canary's share an interrupted deploy
    left ends)."""
    root = Path(__file__).resolve().parents[1]
    undrains = {}
    for name in ("deploy.yml", "rollback.yml", "gpu_upgrade.yml"):
        for play in yaml.safe_load((root / "playbooks" / name).read_text()) or []:
            for task in play.get("post_tasks") or []:
                imported = task.get("ansible.builtin.import_role") or {}
                if imported.get("tasks_from") == "undrain.yml":
                    undrains[name] = task["when"]
    assert undrains == {
        "deploy.yml": "nginx_drain_state.by == 'rollout' or not nginx_drain_state.drained",
        "rollback.yml": "nginx_drain_state.by == 'rollout' or not nginx_drain_state.drained",
        "gpu_upgrade.yml": "nginx_drain_state.by != 'operator'",
    }


def test_provisioning_takes_every_app_host_once_in_one_of_its_two_plays(tmp_path):
    """provision.yml's two plays: hosts that never had a release (facts.yml's in-memory group,
    empty before any task ran) all at once, then the rest a batch at a time. Listed without
    running anything, every app host is in the batched play and none in the other; a host
    expression that rendered to nothing (a generator, a misspelt group) would list none."""
    from role_helpers import ansible_playbook

    inventory = {"all": {"children": {"app": {"hosts": {"app1": {}, "app2": {}}}, "lb": {"hosts": {"lb1": {}}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    listed = ansible_playbook("-i", str(tmp_path / "hosts.yml"), "playbooks/provision.yml", "--list-hosts")
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    hosts = {}
    for block in listed.stdout.split("play #")[1:]:
        head, _, rest = block.partition("\n")
        name = head.split("): ", 1)[1].split("\t")[0].strip()
        hosts[name] = sorted(rest.split("hosts (", 1)[1].split("\n", 1)[1].split())
    assert hosts["Provision the FUN stack on the app hosts that serve nothing yet, all at once"] == []
    assert hosts["Serve the fleet's artifacts to its app hosts"] == []  # facts.yml's group, also in memory
    batched = "Provision the FUN stack (Flask app, uWSGI, nginx, UFW) on the app hosts in service, a batch at a time"
    assert hosts[batched] == ["app1", "app2"]


def test_site_rolls_a_release_out_without_a_canary_unless_asked():
    """site.yml converges (often with no traffic, which a canary judges inconclusive and aborts):
    its rollout has a canary only with funfleet_site_canary; deploy.yml's has one by funfleet_canary."""
    import jinja2
    from ansible.module_utils.parsing.convert_bool import boolean

    site = yaml.safe_load(Path("playbooks/site.yml").read_text())
    rollout = next(p for p in site if p.get("ansible.builtin.import_playbook") == "deploy.yml")
    assert rollout["vars"] == {"funfleet_rollout_by_site": True}
    deploy = yaml.safe_load(Path("playbooks/deploy.yml").read_text())
    expr = next(p["vars"]["_funfleet_canary_on"] for p in deploy if "_funfleet_canary_on" in p.get("vars", {}))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["bool"] = lambda v: boolean(v, strict=False)

    def on(**values: object) -> bool:
        names = {"funfleet_canary": "auto", "funfleet_monitoring_group": "monitoring", **values}
        groups = {"monitoring": ["mon1"]}
        return env.from_string(expr).render(groups=groups, **names).strip() == "True"

    assert on()  # deploy.yml, auto, a monitoring host
    assert not on(funfleet_canary="false")
    assert not on(funfleet_rollout_by_site=True)
    assert not on(funfleet_rollout_by_site=True, funfleet_site_canary=False, funfleet_canary="true")
    assert on(funfleet_rollout_by_site=True, funfleet_site_canary=True)
    assert not on(funfleet_rollout_by_site=True, funfleet_site_canary=True, funfleet_canary="false")
