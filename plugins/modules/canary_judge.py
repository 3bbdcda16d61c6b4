#!/usr/bin/python
# Copyright: funfleet maintainers
# Apache License 2.0 (see galaxy.yml)
"""Judge one window of a canary against its baseline from Prometheus (the canary role's judge)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: canary_judge
short_description: Judge a canary against its baseline over one window, from Prometheus
version_added: 1.1.0
description:
  - Waits one window (plus one scrape interval, so that the window's last samples are in), then asks the
    Prometheus API at O(prometheus_url) for the requests, the latency and the predicted classes of the canary hosts
    and of the baseline hosts over that window, and judges the canary against the baseline.
  - "The checks: the canary's 5xx ratio over the baseline's by more than O(max_5xx_increase), and its 4xx ratio by
    more than O(max_4xx_increase); the canary's p99 of successful predictions over both O(max_p99_ratio) times and
    O(p99_margin) seconds over the baseline's; a model the baseline answers that the canary, at its share, should
    have answered O(min_requests) times and never did; and, per model, the distribution of its top-1 classes (of a
    regression model's output buckets, funfleet_prediction_outputs_total): a chi-square test of homogeneity of
    the canary's counts against the baseline's (classes expected fewer than 5 times pooled; p-value under
    O(class_p_value)) whose effect is large enough (total variation distance over O(class_min_distance)), so
    that a large sample's harmless noise does not fail a canary."
  - Fewer than O(min_requests) predictions on the canary or on the baseline in the window is inconclusive, never a
    pass. The step is judged again over the next window, up to O(inconclusive_windows) times in all; then the canary
    is aborted (fail safe).
  - The module carries the rollout's state (O(state)) from one window to the next and returns the next one, with
    the decision, continue (at the returned share), promote or abort. Each window's verdict and numbers go to the
    journal of the host it runs on (tag funfleet-canary).
  - Runs on the monitoring host (delegate_to), which reaches Prometheus on its loopback.
author: funfleet maintainers (@funfleet)
options:
  prometheus_url:
    description: Prometheus's base URL, as the host the module runs on reaches it.
    type: str
    default: http://127.0.0.1:9090
  canary:
    description: The canary hosts, as their C(host) label reads.
    type: list
    elements: str
    required: true
  baseline:
    description: >-
      The baseline hosts (the rest of the fleet, in service on the release before), as their C(host) label reads.
    type: list
    elements: str
    required: true
  steps:
    description: The canary's share of a host's traffic at each step, in percent; the last step's pass promotes.
    type: list
    elements: int
    required: true
  state:
    description: The state the previous window returned; empty for the first window.
    type: dict
    default: {}
  window:
    description: Seconds one window lasts.
    type: int
    required: true
  lag:
    description: Seconds to wait on top of the window for its last samples to be scraped (the scrape interval).
    type: int
    default: 15
  min_requests:
    description: Predictions the canary and the baseline must each have answered in a window for it to be judged.
    type: int
    default: 50
  max_5xx_increase:
    description: How much higher the canary's 5xx ratio may be than the baseline's (0.01 is one point).
    type: float
    default: 0.01
  max_4xx_increase:
    description: >-
      How much higher the canary's 4xx ratio may be than the baseline's: both see the same clients, so a release
      that refuses what the one before answered (a model or a label gone, an input it no longer takes) fails.
    type: float
    default: 0.05
  max_p99_ratio:
    description: The canary fails when its p99 is over this many times the baseline's (and over it by O(p99_margin)).
    type: float
    default: 1.5
  p99_margin:
    description: Seconds by which the canary's p99 must also exceed the baseline's to fail (latency buckets are coarse).
    type: float
    default: 0.025
  class_p_value:
    description: The chi-square test's p-value under which the canary's classes differ from the baseline's.
    type: float
    default: 0.001
  class_min_distance:
    description: The total variation distance between the two class distributions the canary must also exceed to fail.
    type: float
    default: 0.1
  failures_allowed:
    description: Failed windows tolerated before the canary is aborted (each is judged again over the next window).
    type: int
    default: 0
  inconclusive_windows:
    description: Inconclusive windows tolerated before the canary is aborted (fail safe).
    type: int
    default: 2
"""

EXAMPLES = r"""
- name: Judge the canary over one window
  funfleet.fleet.canary_judge:
    canary: [app1]
    baseline: [app2, app3]
    steps: [10, 50]
    window: 60
    state: "{{ canary_state }}"
  delegate_to: monitor1
  register: judged
"""

RETURN = r"""
decision:
  description: continue (judge the next window at RV(share)), promote or abort.
  returned: always
  type: str
share:
  description: The canary's share for the next window, in percent.
  returned: always
  type: int
verdict:
  description: This window's verdict, pass, fail or inconclusive.
  returned: always
  type: str
state:
  description: The state to pass to the next window.
  returned: always
  type: dict
numbers:
  description: >-
    This window's measurements for the canary and the baseline, and the class (or output bucket) test per model.
  returned: always
  type: dict
reasons:
  description: Why this window failed or was inconclusive.
  returned: always
  type: list
  elements: str
msg:
  description: One line with the verdict, the decision and the numbers.
  returned: always
  type: str
"""

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402

# The endpoints that answer predictions (the app's route rules, the metrics' endpoint label).
PREDICT = "/predict|/v1/models/.+|/v2/models/.+/infer"
HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")


def gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) (Numerical Recipes' gammq)."""
    if x <= 0:
        return 1.0
    front = math.exp(-x + a * math.log(x) - math.lgamma(a))
    if x < a + 1:  # the series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _term in range(10000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * front)
    tiny = 1e-300  # the continued fraction for Q(a, x), modified Lentz
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return front * h


def chi_square(canary: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Chi-square test of homogeneity of two class count tables (2 x K), and the total variation
    distance between their distributions. Classes neither side predicted are left out."""
    classes = sorted(c for c in set(canary) | set(baseline) if canary.get(c, 0) + baseline.get(c, 0) > 0)
    n_canary = sum(canary.get(c, 0) for c in classes)
    n_baseline = sum(baseline.get(c, 0) for c in classes)
    n = n_canary + n_baseline
    statistic = 0.0
    distance = 0.0
    for c in classes:
        column = canary.get(c, 0) + baseline.get(c, 0)
        for observed, row in ((canary.get(c, 0), n_canary), (baseline.get(c, 0), n_baseline)):
            expected = row * column / n
            statistic += (observed - expected) ** 2 / expected
        distance += abs(canary.get(c, 0) / n_canary - baseline.get(c, 0) / n_baseline) / 2
    dof = len(classes) - 1
    p_value = gamma_q(dof / 2, statistic / 2) if dof > 0 else 1.0
    return {"chi2": statistic, "dof": dof, "p_value": p_value, "distance": distance}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts {le: count}, as Prometheus computes it."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return None
    rank = q * buckets[math.inf]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == math.inf:
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def measure(samples: dict[str, list[dict]], group: set[str]) -> dict:
    """One group's numbers from the three queries' samples (each {metric: labels, value: float}).
    A value that is not finite (NaN from a series reset mid-window) counts as no data."""

    def mine(kind: str) -> list[dict]:
        return [s for s in samples[kind] if s["metric"].get("host") in group and math.isfinite(s["value"])]

    requests = sum(s["value"] for s in mine("requests"))
    errors = sum(s["value"] for s in mine("requests") if s["metric"].get("status", "").startswith("5"))
    refused = sum(s["value"] for s in mine("requests") if s["metric"].get("status", "").startswith("4"))
    buckets: dict[float, float] = {}
    for s in mine("latency"):
        le = float(s["metric"]["le"])
        buckets[le] = buckets.get(le, 0.0) + s["value"]

    def tables(kind: str, label: str) -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        for s in mine(kind):
            if s["value"] > 0:
                model = found.setdefault(s["metric"].get("model", "?"), {})
                name = s["metric"].get(label, "?")
                model[name] = model.get(name, 0.0) + s["value"]
        return found

    return {
        "requests": requests,
        "errors": errors,
        "error_ratio": errors / requests if requests > 0 else None,
        "refused": refused,
        "refused_ratio": refused / requests if requests > 0 else None,
        "p99": quantile(0.99, buckets),
        "classes": tables("classes", "class"),
        "outputs": tables("outputs", "bucket") if "outputs" in samples else {},
    }


def pool(canary: dict[str, float], baseline: dict[str, float], least: float = 5.0) -> tuple[dict, dict]:
    """The two tables with the classes whose expected count is under ``least`` on either side
    pooled into one (the chi-square approximation needs about 5 expected per cell)."""
    n_canary, n_baseline = sum(canary.values()), sum(baseline.values())
    n = n_canary + n_baseline
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    for c in set(canary) | set(baseline):
        column = canary.get(c, 0) + baseline.get(c, 0)
        name = c if min(n_canary, n_baseline) * column / n >= least else "(pooled)"
        ours[name] = ours.get(name, 0.0) + canary.get(c, 0)
        theirs[name] = theirs.get(name, 0.0) + baseline.get(c, 0)
    return ours, theirs


def judge(canary: dict, baseline: dict, limits: dict) -> tuple[str, list[str], dict]:
    """This window's verdict (pass, fail or inconclusive), its reasons and the class tests."""
    low = [
        f"{name} answered {group['requests']:.0f} predictions, fewer than {limits['min_requests']}"
        for name, group in (("the canary", canary), ("the baseline", baseline))
        if group["requests"] < limits["min_requests"]
    ]
    if low:
        return "inconclusive", low, {}
    failed = []
    ratios = (("5xx", "error_ratio", "max_5xx_increase"), ("4xx", "refused_ratio", "max_4xx_increase"))
    for kind, ratio, limit in ratios:
        increase = canary[ratio] - baseline[ratio]
        if increase > limits[limit]:
            failed.append(
                f"{kind} ratio {canary[ratio]:.4f} on the canary against {baseline[ratio]:.4f} on the "
                f"baseline (+{increase:.4f}, allowed +{limits[limit]})"
            )
    if canary["p99"] is not None and baseline["p99"] is not None:
        ceiling = max(baseline["p99"] * limits["max_p99_ratio"], baseline["p99"] + limits["p99_margin"])
        if canary["p99"] > ceiling:
            failed.append(
                f"p99 {canary['p99'] * 1000:.1f} ms on the canary against {baseline['p99'] * 1000:.1f} ms on the "
                f"baseline (allowed {ceiling * 1000:.1f} ms)"
            )
    tests = {}
    # What the canary should have answered of each model, at its share of the window's requests.
    share = canary["requests"] / baseline["requests"]
    # A classifier's top-1 classes, a regression model's output buckets: the same test.
    for kind, what in (("classes", "predicted classes"), ("outputs", "outputs' buckets")):
        for model in sorted(baseline[kind]):
            theirs = baseline[kind][model]
            ours = canary[kind].get(model, {})
            expected = sum(theirs.values()) * share
            if not ours and expected >= limits["min_requests"]:
                failed.append(
                    f"the canary answered no prediction of {model}, which the baseline answered "
                    f"{sum(theirs.values()):.0f} times ({expected:.0f} expected at the canary's share)"
                )
                continue
            if min(sum(ours.values()), sum(theirs.values())) < limits["min_requests"]:
                continue
            test = tests[model] = chi_square(*pool(ours, theirs))
            if test["p_value"] < limits["class_p_value"] and test["distance"] > limits["class_min_distance"]:
                failed.append(
                    f"{model}'s {what} differ from the baseline's: chi-square {test['chi2']:.1f} on "
                    f"{test['dof']} degree{'' if test['dof'] == 1 else 's'} of freedom, p-value {test['p_value']:.2g} "
                    f"(under {limits['class_p_value']}), total variation distance {test['distance']:.3f} "
                    f"(over {limits['class_min_distance']})"
                )
    return ("fail" if failed else "pass"), failed, tests


def advance(state: dict, verdict: str, steps: list[int], failures_allowed: int, inconclusive_windows: int) -> dict:
    """The rollout's next state after one window's verdict."""
    state = dict(state)
    state["windows"] += 1
    if verdict == "pass":
        state["step"] += 1
        if state["step"] >= len(steps):
            state["decision"] = "promote"
    elif verdict == "fail":
        state["failed"] += 1
        if state["failed"] > failures_allowed:
            state["decision"] = "abort"
    else:
        state["inconclusive"] += 1
        if state["inconclusive"] > inconclusive_windows:
            state["decision"] = "abort"
    if state["decision"] == "continue":
        state["share"] = steps[state["step"]]
    return state


def start(steps: list[int]) -> dict:
    return {"step": 0, "share": steps[0], "windows": 0, "failed": 0, "inconclusive": 0, "decision": "continue"}


def selector(hosts: list[str]) -> str:
    return "|".join(re.escape(h).replace("\\", "\\\\") for h in hosts)


def query(url: str, promql: str, at: float) -> list[dict]:
    address = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    body = json.load(open_url(address, timeout=30))
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {body.get('status')}: {body.get('error', '')}")
    return [{"metric": r["metric"], "value": float(r["value"][1])} for r in body["data"]["result"]]


def window_queries(hosts: list[str], seconds: int) -> dict[str, str]:
    match = f'host=~"{selector(hosts)}"'
    predict = f'endpoint=~"{PREDICT}"'
    return {
        "requests": (
            "sum by (host, status) (increase(funfleet_http_requests_total"
            f'{{{match},{predict},method="POST"}}[{seconds}s]))'
        ),
        "latency": (
            "sum by (host, le) (increase(funfleet_http_request_duration_seconds_bucket"
            f'{{{match},{predict},status=~"2.."}}[{seconds}s]))'
        ),
        "classes": f"sum by (host, model, class) (increase(funfleet_prediction_classes_total{{{match}}}[{seconds}s]))",
        "outputs": f"sum by (host, model, bucket) (increase(funfleet_prediction_outputs_total{{{match}}}[{seconds}s]))",
    }


def summary(state: dict, verdict: str, reasons: list[str], groups: tuple[dict, dict], canary_hosts: list) -> str:
    canary, baseline = groups

    def group(numbers: dict) -> str:
        ratio = "n/a" if numbers["error_ratio"] is None else f"{numbers['error_ratio']:.4f}"
        p99 = "n/a" if numbers["p99"] is None else f"{numbers['p99'] * 1000:.1f} ms"
        return f"{numbers['requests']:.0f} predictions, 5xx ratio {ratio}, p99 {p99}"

    line = (
        f"canary {','.join(canary_hosts)} window {state['windows']}: {verdict}"
        f"{' (' + '; '.join(reasons) + ')' if reasons else ''}; canary {group(canary)}; baseline {group(baseline)}; "
        f"decision {state['decision']}"
    )
    return line + (f", next share {state['share']}%" if state["decision"] == "continue" else "")


def log(line: str) -> None:
    try:
        import syslog

        syslog.openlog("funfleet-canary")
        syslog.syslog(syslog.LOG_WARNING if "abort" in line else syslog.LOG_INFO, line)
    except (ImportError, OSError):  # no syslog on this host: the controller's output still has it
        pass


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "prometheus_url": {"type": "str", "default": "http://127.0.0.1:9090"},
            "canary": {"type": "list", "elements": "str", "required": True},
            "baseline": {"type": "list", "elements": "str", "required": True},
            "steps": {"type": "list", "elements": "int", "required": True},
            "state": {"type": "dict", "default": {}},
            "window": {"type": "int", "required": True},
            "lag": {"type": "int", "default": 15},
            "min_requests": {"type": "int", "default": 50},
            "max_5xx_increase": {"type": "float", "default": 0.01},
            "max_4xx_increase": {"type": "float", "default": 0.05},
            "max_p99_ratio": {"type": "float", "default": 1.5},
            "p99_margin": {"type": "float", "default": 0.025},
            "class_p_value": {"type": "float", "default": 0.001},
            "class_min_distance": {"type": "float", "default": 0.1},
            "failures_allowed": {"type": "int", "default": 0},
            "inconclusive_windows": {"type": "int", "default": 2},
        },
        supports_check_mode=False,
    )
    p = module.params
    hosts = p["canary"] + p["baseline"]
    if not p["canary"] or not p["baseline"] or not p["steps"] or not all(HOST.match(h) for h in hosts):
        module.fail_json(msg=f"canary {p['canary']} and baseline {p['baseline']} must be host names, and steps given")
    if p["min_requests"] < 1 or p["window"] < 1:
        module.fail_json(msg="min_requests and window must be at least 1")
    if set(p["canary"]) & set(p["baseline"]):
        module.fail_json(msg=f"hosts both canary and baseline: {sorted(set(p['canary']) & set(p['baseline']))}")
    state = dict(p["state"]) if p["state"] else start(p["steps"])
    if state.get("decision") != "continue":
        module.fail_json(msg=f"the canary was already decided ({state.get('decision')}): nothing to judge", state=state)
    time.sleep(p["window"] + p["lag"])
    try:
        at = time.time()
        samples = {
            name: query(p["prometheus_url"], promql, at) for name, promql in window_queries(hosts, p["window"]).items()
        }
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        module.fail_json(msg=f"could not read the window from Prometheus at {p['prometheus_url']}: {exc}", state=state)
    canary, baseline = measure(samples, set(p["canary"])), measure(samples, set(p["baseline"]))
    verdict, reasons, tests = judge(canary, baseline, p)
    state = advance(state, verdict, p["steps"], p["failures_allowed"], p["inconclusive_windows"])
    line = summary(state, verdict, reasons, (canary, baseline), p["canary"])
    log(line)
    module.exit_json(
        changed=False,
        decision=state["decision"],
        share=state["share"],
        verdict=verdict,
        state=state,
        numbers={"canary": canary, "baseline": baseline, "classes": tests},
        reasons=reasons,
        msg=line,
    )


if __name__ == "__main__":
    main()
