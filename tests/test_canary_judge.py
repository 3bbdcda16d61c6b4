"""The canary judge (plugins/modules/canary_judge.py): its statistics against scipy's, its
verdicts on each kind of bad release, and the rollout's states from one window to the next; then
the module itself against a stand-in Prometheus API that answers as Prometheus does."""

from __future__ import annotations

import http.server
import importlib.util
import json
import math
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "plugins/modules/canary_judge.py"
_spec = importlib.util.spec_from_file_location("canary_judge", MODULE)
judge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge)

LIMITS = {
    "min_requests": 50,
    "max_5xx_increase": 0.01,
    "max_4xx_increase": 0.05,
    "max_p99_ratio": 1.5,
    "p99_margin": 0.025,
    "class_p_value": 0.001,
    "class_min_distance": 0.1,
}
DIGITS = {str(d): 30.0 for d in range(10)}


@pytest.mark.parametrize(("a", "x"), [(0.5, 0.1), (0.5, 3.0), (4.5, 2.0), (4.5, 30.0), (31.5, 20.0), (31.5, 90.0)])
def test_the_upper_incomplete_gamma_matches_scipy(a, x):
    assert judge.gamma_q(a, x) == pytest.approx(stats.gamma.sf(x, a), rel=1e-9, abs=1e-300)


def test_the_chi_square_test_matches_scipy():
    canary = {"0": 12, "1": 30, "2": 5, "3": 0}
    baseline = {"0": 40, "1": 80, "2": 30, "3": 7, "4": 0}
    ours = judge.chi_square(canary, baseline)
    table = [[12, 30, 5, 0], [40, 80, 30, 7]]
    chi2, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
    assert ours["chi2"] == pytest.approx(chi2, rel=1e-9)
    assert ours["dof"] == dof == 3
    assert ours["p_value"] == pytest.approx(p_value, rel=1e-6)


def test_one_class_on_both_sides_is_no_difference():
    assert judge.chi_square({"7": 100}, {"7": 900}) == {"chi2": 0.0, "dof": 0, "p_value": 1.0, "distance": 0.0}


def test_the_quantile_interpolates_within_its_bucket_as_prometheus_does():
    buckets = {0.01: 50.0, 0.025: 90.0, 0.05: 100.0, math.inf: 100.0}
    assert judge.quantile(0.5, buckets) == pytest.approx(0.01)
    assert judge.quantile(0.99, buckets) == pytest.approx(0.025 + 0.025 * 9 / 10)
    assert judge.quantile(0.99, {0.01: 0.0, math.inf: 0.0}) is None
    assert judge.quantile(0.99, {}) is None
    # Past the last finite bucket Prometheus answers that bucket's bound.
    assert judge.quantile(0.99, {0.01: 10.0, 5.0: 10.0, math.inf: 100.0}) == 5.0


def group(*, requests=500.0, errors=0.0, p99=0.012, classes=None, refused=0.0, outputs=None):
    return {
        "requests": requests,
        "errors": errors,
        "error_ratio": errors / requests if requests else None,
        "refused": refused,
        "refused_ratio": refused / requests if requests else None,
        "p99": p99,
        "classes": {"digits": dict(DIGITS if classes is None else classes)},
        "outputs": {"diabetes": dict(outputs)} if outputs else {},
    }


def test_a_canary_like_its_baseline_passes():
    noisy = {d: n + (3 if int(d) % 2 else -3) for d, n in DIGITS.items()}
    verdict, reasons, tests = judge.judge(group(classes=noisy), group(requests=1500.0), LIMITS)
    assert (verdict, reasons) == ("pass", [])
    assert tests["digits"]["p_value"] > 0.5


def test_a_share_of_5xx_fails():
    verdict, reasons, _ = judge.judge(group(errors=40.0), group(requests=1500.0, errors=1.0), LIMITS)
    assert verdict == "fail"
    assert reasons[0].startswith("5xx ratio 0.0800 on the canary against 0.0007 on the baseline")


def test_a_markedly_slower_canary_fails_and_one_bucket_slower_does_not():
    verdict, reasons, _ = judge.judge(group(p99=0.24), group(p99=0.012), LIMITS)
    assert verdict == "fail"
    assert "p99 240.0 ms on the canary against 12.0 ms" in reasons[0]
    # 12 ms to 30 ms is over 1.5 times but within the 25 ms margin: latency buckets are coarse.
    assert judge.judge(group(p99=0.030), group(p99=0.012), LIMITS)[0] == "pass"


def test_permuted_labels_fail_on_the_class_test():
    skewed = {"0": 0.0, "1": 250.0, **{str(d): 250 / 8 for d in range(2, 10)}}
    verdict, reasons, tests = judge.judge(group(classes=skewed), group(requests=1500.0), LIMITS)
    assert verdict == "fail"
    assert "digits's predicted classes differ" in reasons[0]
    assert tests["digits"]["p_value"] < 1e-12
    assert tests["digits"]["distance"] > 0.3


# A regression model's progression, counted in its output buckets (funfleet_prediction_outputs_total).
PROGRESSION = {"50.0": 40.0, "100.0": 120.0, "150.0": 150.0, "200.0": 110.0, "250.0": 60.0, "+Inf": 20.0}


def test_a_regression_canary_whose_outputs_shift_fails_on_its_buckets():
    """A release answering in other units (or trained on shifted targets): every value one bucket up."""
    names = list(PROGRESSION)
    shifted = {names[min(i + 1, len(names) - 1)]: 0.0 for i in range(len(names))}
    for i, name in enumerate(names):
        shifted[names[min(i + 1, len(names) - 1)]] += PROGRESSION[name]
    verdict, reasons, tests = judge.judge(group(outputs=shifted), group(requests=1500.0, outputs=PROGRESSION), LIMITS)
    assert verdict == "fail"
    assert len(reasons) == 1
    assert reasons[0].startswith("diabetes's outputs' buckets differ from the baseline's")
    assert tests["diabetes"]["distance"] > 0.25
    # Its own noise passes; a model with buckets the canary never answers fails as a missing class model does.
    noisy = {b: n + (2 if i % 2 else -2) for i, (b, n) in enumerate(PROGRESSION.items())}
    assert judge.judge(group(outputs=noisy), group(requests=1500.0, outputs=PROGRESSION), LIMITS)[0] == "pass"
    many = {b: 3 * n for b, n in PROGRESSION.items()}
    verdict, reasons, _ = judge.judge(group(), group(requests=1500.0, outputs=many), LIMITS)
    assert reasons == [
        "the canary answered no prediction of diabetes, which the baseline answered 1500 times "
        "(500 expected at the canary's share)"
    ]


def test_a_large_sample_with_a_small_shift_passes_on_its_effect_size():
    """Thousands of predictions make a 3-point shift significant; it is no reason to roll back."""
    big = {str(d): 3000.0 for d in range(10)}
    shifted = {**big, "0": 3900.0, "1": 2100.0}
    _, _, tests = judge.judge(group(classes=shifted), group(classes=big), LIMITS)
    assert tests["digits"]["p_value"] < LIMITS["class_p_value"]
    assert judge.judge(group(classes=shifted), group(classes=big), LIMITS)[0] == "pass"


def test_a_canary_that_refuses_what_the_baseline_answers_fails():
    """A release that lost a model or a label answers 404s: no 5xx, no 2xx latency, few classes."""
    verdict, reasons, _ = judge.judge(group(refused=450.0, p99=None), group(requests=1500.0, refused=15.0), LIMITS)
    assert verdict == "fail"
    assert reasons[0].startswith("4xx ratio 0.9000 on the canary against 0.0100 on the baseline")


def test_a_model_the_canary_never_answers_fails():
    canary, baseline = group(), group(requests=1500.0)
    baseline["classes"]["iris"] = {"setosa": 300.0, "virginica": 300.0}
    verdict, reasons, _ = judge.judge(canary, baseline, LIMITS)
    assert verdict == "fail"
    assert reasons == [
        "the canary answered no prediction of iris, which the baseline answered 600 times "
        "(200 expected at the canary's share)"
    ]
    # At a share too small to expect min_requests of it, its absence proves nothing.
    baseline["classes"]["iris"] = {"setosa": 60.0}
    assert judge.judge(canary, baseline, LIMITS)[0] == "pass"


def test_rare_classes_are_pooled_before_the_test():
    ours, theirs = judge.pool({"a": 50.0, "b": 50.0, "c": 1.0, "d": 0.0}, {"a": 60.0, "b": 40.0, "c": 2.0, "d": 3.0})
    assert ours == {"a": 50.0, "b": 50.0, "(pooled)": 1.0}
    assert theirs == {"a": 60.0, "b": 40.0, "(pooled)": 5.0}


def test_a_window_with_a_nan_sample_counts_it_as_no_data():
    samples = {
        "requests": [{"metric": {"host": "a", "status": "200"}, "value": float("nan")}],
        "latency": [],
        "classes": [],
    }
    assert judge.measure(samples, {"a"})["requests"] == 0


@pytest.mark.parametrize("who", ["canary", "baseline"])
def test_too_little_traffic_on_either_side_is_inconclusive(who):
    quiet = group(requests=12.0)
    pair = (quiet, group()) if who == "canary" else (group(), quiet)
    verdict, reasons, _ = judge.judge(*pair, LIMITS)
    assert verdict == "inconclusive"
    assert reasons == [f"the {who} answered 12 predictions, fewer than 50"]


def test_a_model_with_too_few_predictions_is_not_class_tested():
    few = group()
    few["classes"]["iris"] = {"setosa": 3.0}
    base = group()
    base["classes"]["iris"] = {"versicolor": 60.0}
    verdict, _, tests = judge.judge(few, base, LIMITS)
    assert verdict == "pass"
    assert set(tests) == {"digits"}


def run(steps, verdicts, failures_allowed=0, inconclusive_windows=2):
    state, seen = judge.start(steps), []
    for verdict in verdicts:
        state = judge.advance(state, verdict, steps, failures_allowed, inconclusive_windows)
        seen.append((state["decision"], state["share"]))
        if state["decision"] != "continue":
            break
    return seen


def test_each_passed_step_raises_the_share_and_the_last_promotes():
    assert run([10, 50], ["pass", "pass"]) == [("continue", 50), ("promote", 50)]


def test_a_failed_window_aborts_unless_failures_are_allowed():
    assert run([10, 50], ["pass", "fail"]) == [("continue", 50), ("abort", 50)]
    assert run([10, 50], ["fail", "pass", "pass"], failures_allowed=1) == [
        ("continue", 10),
        ("continue", 50),
        ("promote", 50),
    ]


def test_a_release_without_traffic_is_never_promoted_it_is_aborted():
    assert run([10, 50], ["inconclusive"] * 5, inconclusive_windows=2) == [
        ("continue", 10),
        ("continue", 10),
        ("abort", 10),
    ]


# The module end to end, as Ansible runs it (its arguments in a JSON file), against a stand-in of
# Prometheus's query API that answers with vectors of the shape Prometheus returns.
def vectors(hosts_classes: dict[str, dict[str, float]], errors: dict[str, float]) -> dict[str, list]:
    out: dict[str, list] = {"requests": [], "latency": [], "classes": []}
    for host, classes in hosts_classes.items():
        total = sum(classes.values())
        out["requests"] += [
            {"metric": {"host": host, "status": "200"}, "value": [0, str(total - errors.get(host, 0))]},
            {"metric": {"host": host, "status": "500"}, "value": [0, str(errors.get(host, 0))]},
        ]
        out["latency"] += [
            {"metric": {"host": host, "le": le}, "value": [0, str(total * share)]}
            for le, share in (("0.01", 0.9), ("0.025", 1.0), ("+Inf", 1.0))
        ]
        out["classes"] += [
            {"metric": {"host": host, "model": "digits", "class": c}, "value": [0, str(n)]} for c, n in classes.items()
        ]
    return out


@pytest.fixture
def prometheus():
    answers: dict[str, list] = {}
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            promql = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
            asked.append(promql)
            kinds = (("outputs", "prediction_outputs"), ("latency", "bucket"), ("classes", "classes"), ("requests", ""))
            kind = next(k for k, metric in kinds if metric in promql)
            result = answers.get(kind, [])
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", answers, asked
    server.shutdown()


def module(tmp_path, **args) -> dict:
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"window": 1, "lag": 0, **args}}))
    done = subprocess.run([sys.executable, str(MODULE), str(path)], capture_output=True, text=True, check=False)
    return json.loads(done.stdout)


def test_the_module_promotes_a_good_canary_and_aborts_a_wrong_one(prometheus, tmp_path):
    url, answers, asked = prometheus
    answers.update(vectors({"app1": DIGITS, "app2": DIGITS, "app3": DIGITS}, {}))
    result = module(tmp_path, prometheus_url=url, canary=["app1"], baseline=["app2", "app3"], steps=[50])
    assert (result["verdict"], result["decision"]) == ("pass", "promote"), result
    assert result["numbers"]["canary"]["requests"] == 300
    assert result["numbers"]["baseline"]["requests"] == 600
    assert 'host=~"app1|app2|app3"' in asked[0]

    wrong = {str(d): 300.0 if d == 1 else 0.0 for d in range(10)}
    answers.update(vectors({"app1": wrong, "app2": DIGITS, "app3": DIGITS}, {"app1": 30}))
    result = module(tmp_path, prometheus_url=url, canary=["app1"], baseline=["app2", "app3"], steps=[10, 50])
    assert (result["verdict"], result["decision"]) == ("fail", "abort")
    assert len(result["reasons"]) == 2  # the 5xx ratio and the classes
    assert "decision abort" in result["msg"]


def test_the_module_reads_a_regression_models_output_buckets(prometheus, tmp_path):
    url, answers, asked = prometheus
    answers.update(vectors({"app1": DIGITS, "app2": DIGITS}, {}))
    low = {"50.0": 200.0, "100.0": 100.0}
    answers["outputs"] = [
        {"metric": {"host": host, "model": "diabetes", "bucket": b}, "value": [0, str(n)]}
        for host, buckets in (("app1", low), ("app2", PROGRESSION))
        for b, n in buckets.items()
    ]
    result = module(tmp_path, prometheus_url=url, canary=["app1"], baseline=["app2"], steps=[50])
    assert (result["verdict"], result["decision"]) == ("fail", "abort"), result
    assert result["reasons"][0].startswith("diabetes's outputs' buckets differ")
    assert any("funfleet_prediction_outputs_total" in q and "bucket" in q for q in asked)


def test_the_module_fails_loudly_without_prometheus(tmp_path):
    result = module(tmp_path, prometheus_url="http://127.0.0.1:9", canary=["app1"], baseline=["app2"], steps=[50])
    assert result["failed"] is True
    assert "could not read the window from Prometheus" in result["msg"]


def test_the_module_refuses_a_host_in_both_groups(tmp_path):
    result = module(tmp_path, canary=["app1"], baseline=["app1", "app2"], steps=[50])
    assert result["failed"] is True
    assert "both canary and baseline" in result["msg"]
