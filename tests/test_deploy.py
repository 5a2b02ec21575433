"""deploy/: Prometheus config and alert rules, the Grafana dashboard, docker compose,
systemd units and Kubernetes manifests, checked with the real tools where they exist here
(promtool, a Prometheus server scraping a running worker, systemd-analyze) and against the
project itself everywhere else: every metric name is one the workers export, every
``selfdistill`` command is a real subcommand with real options, every ``SELFDISTILL_*``
variable is a real configuration key.
"""

from __future__ import annotations

import base64
import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from streams.broker import free_port
from tests.conftest import ROOT, start_cli, wait_for

DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "selfdistill.json"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
VENV_BIN = Path(sys.executable).parent
# Every worker with a process, port and scrape job of its own. `store` (the store writer
# alone) is optional: by default the writer runs inside train.
WORKERS = ("serve", "verify", "train", "store")
DEFAULT_WORKERS = ("serve", "verify", "train")
# The Kubernetes workload of each default worker (the writer runs inside the train pod).
K8S_KINDS = {"serve": "Deployment", "verify": "Deployment", "train": "StatefulSet"}
STORE_ALERTS = ("SelfdistillStoreWriterDown", "SelfdistillStoreBehind", "SelfdistillStoreStalled")
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: `make tools` installs Debian's prometheus package")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


# ------------------------------------------------------------------ metric names
def exported_names() -> set[str]:
    """Every sample name the workers' /metrics can contain, plus Prometheus' own ``up``."""
    from prometheus_client import REGISTRY

    import daemon.operating.metrics  # noqa: F401  (registers the worker metrics)
    import streams.metrics  # noqa: F401  (registers the streams-layer metrics)

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names = {"up"}
    for family in REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(s.name for s in family.samples)
    return names


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and"}
_KEYWORDS |= {"or", "unless", "offset", "inf", "nan", "start", "end"}
_AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATORS |= {"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels dropped)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"#[^\n]*", "", e)  # comments
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name in _KEYWORDS or name in _AGGREGATORS:
            continue
        names.add(name)
    return names


def label_names() -> dict[str, set[str]]:
    """Sample name -> the labels it can carry (its own, and what a scrape adds)."""
    from prometheus_client import REGISTRY

    import daemon.operating.metrics  # noqa: F401
    import streams.metrics  # noqa: F401

    # job and instance come with every scrape; prometheus.yml adds `worker` to each target.
    added = {"job", "instance", "worker"}
    out: dict[str, set[str]] = {"up": set(added)}
    for collector, names in REGISTRY._collector_to_names.items():  # no public API for this
        own = set(getattr(collector, "_labelnames", ()))
        for name in names:
            out[name] = own | added | ({"le"} if name.endswith("_bucket") else set())
    return out


def check_selectors(expr: str, where: str) -> None:
    """Label matchers in ``metric{...}`` name labels that metric has (Info labels are free)."""
    labels = label_names()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        name, matchers = m.groups()
        if name.endswith("_info") or name not in labels:
            continue
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in labels[name], f"{where}: {name} has no label {label!r}"


def test_metric_name_extraction_sees_what_an_expression_selects() -> None:
    # The checks below are only as good as this extractor: prove it on known input.
    expr = (
        "histogram_quantile(0.95, sum by (le, topic) (rate(selfdistill_batch_seconds_bucket"
        '{topic=~"a|b"}[$__rate_interval]))) / on () up offset 5m '
        'or label_replace(vector(1), "x", "$1", "y", "(.*)") > 1e3 and bogus_metric'
    )
    assert metric_names(expr) == {"selfdistill_batch_seconds_bucket", "up", "bogus_metric"}
    assert "bogus_metric" not in exported_names()
    assert {"selfdistill_build_info", "selfdistill_stage_results_total", "up"} <= exported_names()
    check_selectors('selfdistill_stage_results_total{stage="cycle", result=~"pass"}', "ok")
    with pytest.raises(AssertionError, match="no label 'outcome'"):
        check_selectors('selfdistill_training_runs_total{outcome="failed"}', "bad")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    exprs = []
    for p in dashboard_panels(dash):
        for t in p.get("targets", []):
            exprs.append((f"panel {p['title']!r}", t.get("expr", "")))
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            exprs.append((f"annotation {a['name']!r}", a["expr"]))
        if "target" in a and "expr" in a["target"]:
            exprs.append((f"annotation {a['name']!r}", a["target"]["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            exprs.append((f"variable {v['name']!r}", q))
    return exprs


# ------------------------------------------------------------------ prometheus
def test_promtool_accepts_the_config_and_the_rules() -> None:
    r = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alerts.yml" in r.stdout  # the rule file is loaded from the config
    r = promtool("check", "rules", str(PROM_DIR / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    r = promtool("test", "rules", str(PROM_DIR / "alerts_test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    # The unit tests exercise real alerts, each firing and quiet.
    names = {r["alert"] for r in alert_rules()}
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t["alert_rule_test"]:
            assert case["alertname"] in names, f"test of unknown alert {case['alertname']}"
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert len(firing & quiet) >= 3, (firing, quiet)
    for name in STORE_ALERTS:
        assert name in firing & quiet, f"{name} is not tested both firing and quiet"


def test_alert_rules_are_complete_and_use_exported_metrics() -> None:
    rules = alert_rules()
    exported = exported_names()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for wanted in (
        "SelfdistillWorkerDown",
        "SelfdistillNoAcceptedSamples",
        "SelfdistillAcceptanceRateCollapse",
        "SelfdistillAdapterSwapFailed",
        "SelfdistillDeadLettersGrowing",
        "SelfdistillTrainingFailed",
        "SelfdistillGateRejectsEverything",
        "SelfdistillConsumerLagGrowing",
        *STORE_ALERTS,
    ):
        assert wanted in names
    for r in rules:
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert r["annotations"]["summary"].strip() and r["annotations"]["description"].strip()
        used = metric_names(r["expr"])
        assert used, f"{r['alert']}: no metric in {r['expr']!r}"
        assert used <= exported, f"{r['alert']}: not exported: {sorted(used - exported)}"
        check_selectors(r["expr"], r["alert"])


def test_store_alerts_watch_the_processes_that_run_the_store_writer() -> None:
    """Every process exports the writer's gauges (0 where no writer runs): the rules about
    them must look only at train and store, and pick the best of the two."""
    from streams.topics import TopicsConfig

    rules = {r["alert"]: r for r in alert_rules()}
    prom = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"]}
    assert {f"selfdistill-{w}" for w in WORKERS} <= jobs
    gauges = ("selfdistill_store_writer_up", "selfdistill_store_last_write_timestamp_seconds")
    for r in alert_rules():
        for gauge in gauges:
            for matchers in re.findall(rf"{gauge}\s*\{{([^}}]*)\}}", r["expr"]):
                (job,) = re.findall(r'job\s*=~\s*"([^"]+)"', matchers)
                for worker in WORKERS:
                    writes = worker in ("train", "store")
                    assert bool(re.fullmatch(job, f"selfdistill-{worker}")) == writes, (
                        r["alert"],
                        worker,
                    )
            if gauge in r["expr"]:
                assert re.search(rf"max\s*\(\s*{gauge}\b", r["expr"]), r["alert"]
    # The lag they read is the store writer's: the verdicts topic, under its default name.
    verdicts = TopicsConfig().verdicts
    assert f'topic="{verdicts}"' in rules["SelfdistillStoreBehind"]["expr"]
    assert f'topic!="{verdicts}"' in rules["SelfdistillConsumerLagGrowing"]["expr"]
    assert "selfdistill_verdicts_published_total" in rules["SelfdistillStoreStalled"]["expr"]


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_prometheus_scrapes_a_running_train_worker(tmp_path: Path) -> None:
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"{PROMETHEUS} is absent (`make tools` installs Debian's prometheus)")
    metrics_port, prom_port = free_port(), free_port()
    config = tmp_path / "selfdistill.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        "[train]\ninterval_s = 3600\n"
        f"[metrics]\ntrain_port = {metrics_port}\n"
    )
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                # the real rules, loaded into a real server
                "rule_files": [str(PROM_DIR / "alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "selfdistill-train",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    worker = start_cli("-c", str(config), "train")
    prom_log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(q: str) -> list[dict[str, Any]]:
        body = _get_json(f"{api}/query?query={q}")
        return body["data"]["result"] if body else []

    try:

        def worker_ready() -> bool:
            assert worker.poll() is None, worker.communicate()[1]
            try:
                return httpx.get(f"http://127.0.0.1:{metrics_port}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(worker_ready, timeout=30)
        wait_for(
            lambda: any(
                r["metric"].get("worker") == "train" and r["metric"]["job"] == "selfdistill-train"
                for r in query("selfdistill_build_info")
            ),
            timeout=30,
            every=0.3,
        )
        up = query('up{job="selfdistill-train"} == 1')
        assert len(up) == 1 and up[0]["value"][1] == "1", up
        # The scraped names are the ones the dashboard and rules are checked against.
        families = {r["metric"]["__name__"] for r in query('{job="selfdistill-train"}')}
        assert {"selfdistill_build_info", "selfdistill_samples_accepted_total"} <= families
        # The store writer's gauges, which the store alerts read from train by default.
        assert {
            "selfdistill_store_writer_up",
            "selfdistill_store_last_write_timestamp_seconds",
        } <= families
        # The server loaded every alert rule.
        rules = _get_json(f"{api}/rules")
        assert rules is not None
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert loaded == {r["alert"] for r in alert_rules()}
        # Every dashboard query is valid PromQL for this server (Grafana's variables
        # filled in as Grafana would).
        grafana_vars = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s"}
        for where, expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
            for var, value in grafana_vars.items():
                expr = expr.replace(var, value)
            r = httpx.get(f"{api}/query", params={"query": expr}, timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "success", (where, r.text)
    finally:
        for p in (worker, prom):
            p.terminate()
        for p in (worker, prom):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        prom_log.close()
        if worker.stdout:
            worker.stdout.close()
        if worker.stderr:
            worker.stderr.close()


# ------------------------------------------------------------------ grafana
def test_dashboard_panels_query_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 38 and dash["uid"] and dash["title"]
    exported = exported_names()
    panels = [p for p in dashboard_panels(dash) if p["type"] != "row"]
    assert len(panels) >= 12
    assert len({p["id"] for p in dashboard_panels(dash)}) == len(dashboard_panels(dash))
    for p in panels:
        assert p["targets"], f"panel {p['title']!r} has no target"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
    exprs = dashboard_exprs(dash)
    for where, expr in exprs:
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= exported, f"{where}: not exported: {sorted(used - exported)}"
        check_selectors(expr, where)
    every = " ".join(e for _, e in exprs)
    for name in (
        "selfdistill_prompts_served_total",
        "selfdistill_serve_latency_seconds_bucket",
        "selfdistill_judge_tokens_total",
        "selfdistill_votes_total",
        "selfdistill_store_samples",
        "selfdistill_dlq_messages_total",
        "selfdistill_consumer_lag_messages",
        "selfdistill_training_runs_total",
        "selfdistill_training_loss",
        "selfdistill_eval_score",
        "selfdistill_active_adapter_info",
        "selfdistill_adapter_swaps_total",
        "selfdistill_verdicts_published_total",
        "selfdistill_store_verdicts_total",
        "selfdistill_store_writer_up",
        "selfdistill_store_last_write_timestamp_seconds",
    ):
        assert name in every, f"no panel shows {name}"
    # verify's backlog (candidates) beside the store writer's (verdicts), in one panel.
    assert any(
        {'topic="candidates"', 'topic="verdicts"'}
        <= {m for t in p["targets"] for m in re.findall(r'topic="\w+"', t["expr"])}
        for p in panels
    ), "no panel shows the candidates lag beside the verdicts lag"
    # The funnel: judged -> each stage's passes, in cascade order -> accepted.
    funnel = next(p for p in panels if "funnel" in p["title"].lower())
    order = [t["expr"] for t in funnel["targets"]]
    assert "candidates_judged" in order[0] and "samples_accepted" in order[-1]
    stages = [re.search(r'stage="(\w+)"', e).group(1) for e in order[1:-1]]  # type: ignore[union-attr]
    assert stages == ["static", "cycle", "factuality", "correctness"]
    # Promotions, rollbacks and swaps are annotated.
    annotations = " ".join(a.get("expr", "") for a in dash["annotations"]["list"])
    assert "selfdistill_adapter_events_total" in annotations
    assert "selfdistill_active_adapter_info" in annotations


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    provisioned = {d["uid"]: d for d in ds}
    assert var["current"]["value"] in provisioned  # the default is the provisioned uid
    source = provisioned[var["current"]["value"]]
    assert source["type"] == "prometheus"
    providers = yaml.safe_load((prov / "dashboards" / "selfdistill.yml").read_text())["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    # In compose, the provider's path is where deploy/grafana/dashboards is mounted, the
    # provisioning dir is where Grafana reads it, and the datasource URL is the
    # prometheus service.
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = dict(m.split(":")[:2] for m in compose["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert (DEPLOY / "grafana/dashboards").resolve() == DASHBOARD.parent.resolve()
    host, port = re.match(r"https?://([^:/]+):(\d+)", source["url"]).groups()  # type: ignore[union-attr]
    assert host in compose and port == "9090"
    assert "./prometheus:/etc/prometheus:ro" in compose["prometheus"]["volumes"]


# ------------------------------------------------------------------ the CLI and config
def check_cli(args: list[str], where: str) -> None:
    """``args`` (after ``selfdistill``) name a real subcommand with options it accepts."""
    import typer

    from daemon.operating.cli import app

    group = typer.main.get_command(app)  # a click Group (typer may ship its own click)
    root_opts = {o: p for p in group.params for o in (*p.opts, *p.secondary_opts)}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        opt = args[i].split("=", 1)[0]
        assert opt in root_opts, f"{where}: unknown option {opt} in {args}"
        flag = getattr(root_opts[opt], "is_flag", False)
        i += 1 if flag or "=" in args[i] else 2
    cmd: Any = group
    name = "selfdistill"
    while hasattr(cmd, "commands"):
        if (i == len(args) or args[i].startswith("-")) and cmd.invoke_without_command:
            break  # `selfdistill store`: the group runs by itself
        assert i < len(args), f"{where}: {args} names no subcommand of {name}"
        sub = cmd.commands.get(args[i])
        assert sub is not None, f"{where}: {args[i]!r} is not a subcommand of {name}"
        cmd, name, i = sub, args[i], i + 1
    try:
        cmd.make_context(name, list(args[i:]))
    except Exception as exc:  # click's UsageError / BadParameter / NoSuchOption
        if not hasattr(exc, "format_message"):
            raise
        raise AssertionError(
            f"{where}: `selfdistill {' '.join(args)}`: {exc.format_message()}"
        ) from None


def test_cli_checker_rejects_what_the_cli_rejects() -> None:
    check_cli(["-c", "/etc/x.toml", "adapters", "rollback", "base"], "ok")
    check_cli(["store"], "ok")  # a group that runs by itself (the store writer)
    check_cli(["store", "rebuild", "--out", "/tmp/s.db", "--timeout", "60"], "ok")
    for bad in (
        ["serv"],
        ["adapters", "rollbak"],
        ["train", "--onse"],
        ["adapters", "show"],
        ["adapters"],
        ["store", "rebuil"],
        ["store", "rebuild"],
    ):
        with pytest.raises(AssertionError, match=r"subcommand|option|argument|names no"):
            check_cli(bad, "bad")


SETTINGS_ENV = re.compile(r"\bSELFDISTILL_[A-Z0-9_]*[A-Z0-9]\b")


def check_env_names(names: set[str], where: str) -> None:
    """Each SELFDISTILL_<SECTION>__<KEY> names a settings field (SELFDISTILL_CONFIG: the file)."""
    from pydantic import BaseModel

    from daemon.operating.config import Settings

    for name in names - {"SELFDISTILL_CONFIG"}:
        model: Any = Settings
        for part in name.removeprefix("SELFDISTILL_").lower().split("__"):
            assert isinstance(model, type) and issubclass(model, BaseModel), (
                f"{where}: {name}: {part!r} is below a plain value"
            )
            assert part in model.model_fields, f"{where}: {name}: no key {part!r}"
            model = model.model_fields[part].annotation


def load_with_env(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str = ""
) -> Any:
    """Settings from ``toml`` plus these SELFDISTILL_* variables; ConfigError on a bad one."""
    from daemon.operating.config import load_settings

    path = tmp_path / f"cfg-{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(toml)
    with monkeypatch.context() as m:
        for k, v in env.items():
            if k != "SELFDISTILL_CONFIG":
                m.setenv(k, v)
        return load_settings(path)


def test_every_selfdistill_variable_in_deploy_is_a_config_key() -> None:
    found: set[str] = set()
    for f in sorted(DEPLOY.rglob("*")):
        if f.is_file():
            names = set(SETTINGS_ENV.findall(f.read_text(errors="replace")))
            check_env_names(names, str(f.relative_to(ROOT)))
            found |= names
    assert len(found) >= 10, found
    with pytest.raises(AssertionError, match="no key"):
        check_env_names({"SELFDISTILL_KAFKA__BOOTSTRAP_SERVER"}, "typo")
    with pytest.raises(AssertionError, match="no key"):
        check_env_names({"SELFDISTILL_METRICS_HOST"}, "single underscore")


CLI_IN_TEXT = re.compile(
    r"(?:^[ \t]*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S+\s+)*|\s--\s+|\bexec\s+\S+\s+|/bin/|`)"
    r"selfdistill((?:[ \t]+[^\s`|;&#>\\]+)*)",
    re.MULTILINE,
)


def test_every_selfdistill_command_written_in_deploy_is_real() -> None:
    seen = 0
    for f in sorted(DEPLOY.rglob("*")):
        if not f.is_file():
            continue
        text = f.read_text()
        if f.suffix == ".md":  # code only: fenced blocks and inline spans, not prose
            fenced = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
            spans = re.findall(r"`[^`]+`", fenced.sub("", text))
            text = "\n".join(fenced.findall(text) + spans)
        text = re.sub(r"\{\{[^}]*\}\}", "X", text)  # alert templates: {{ $labels.topic }}
        for m in CLI_IN_TEXT.finditer(text):
            args = shlex.split(m.group(1))
            if args:
                check_cli(args, f"{f.relative_to(ROOT)}: {m.group(0).strip()!r}")
                seen += 1
    assert seen >= 20, seen  # README, compose comments, systemd ExecStart, k8s comments


# ------------------------------------------------------------------ docker compose
def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR}, with no variable set."""

    def sub(m: re.Match[str]) -> str:
        op, arg = m.group(2), m.group(3) or ""
        return arg if op in (":-", "-") else ("set-by-operator" if op in (":?", "?") else "")

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", sub, value)


def compose_services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def selfdistill_services() -> dict[str, Any]:
    return {k: v for k, v in compose_services().items() if "build" in v}


def test_compose_kafka_is_a_single_kraft_node() -> None:
    kafka = compose_services()["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    listeners = dict(x.split("://") for x in env["KAFKA_LISTENERS"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka{listeners[controller]}"
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1"
    # CLUSTER_ID must be a base64url UUID or `kafka-storage format` refuses it.
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    # The workers' bootstrap server is an advertised listener on the compose network.
    for name, svc in selfdistill_services().items():
        if "SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS" in svc.get("environment", {}):
            assert svc["environment"]["SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS"] in (
                advertised.values()
            ), name


def compose_mounts(svc: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """A service's short-syntax volumes: target -> (volume, read-only)."""
    out = {}
    for m in svc.get("volumes", []):
        source, target, *mode = m.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_compose_vllm_serves_runtime_lora_from_the_shared_adapter_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose_services()
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    args = [interpolate(str(a)) for a in vllm["command"]]
    assert "--enable-lora" in args
    assert int(args[args.index("--max-lora-rank") + 1]) == 16
    assert int(args[args.index("--max-loras") + 1]) == 4
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    served = args[args.index("--served-model-name") + 1]
    vllm_mounts = compose_mounts(vllm)
    state: dict[str, set[str]] = {}  # the volume of the SQLite files -> who mounts it
    for name in (*DEFAULT_WORKERS, "store"):
        svc = services[name]
        env = {k: interpolate(str(v)) for k, v in svc["environment"].items()}
        s = load_with_env(env, tmp_path, monkeypatch)
        assert s.engine.kind == "openai"
        assert s.engine.base_url == "http://vllm:8000/v1"
        assert s.model.name == served
        assert s.metrics.host == "0.0.0.0"
        assert s.train.lora.r <= int(args[args.index("--max-lora-rank") + 1])
        assert s.serve.adapters_kept_loaded < int(args[args.index("--max-loras") + 1])
        mounts = compose_mounts(svc)
        registry = str(s.adapters.path(s.data_dir))
        # vLLM loads adapters by path: it must see the adapter files where train writes
        # them, from the same volume; serve and verify read them, read-only.
        if name != "store":
            volume, read_only = mounts[registry]
            assert vllm_mounts[registry] == (volume, True), (name, vllm_mounts)
            assert read_only == (name != "train"), name
        # The SQLite files (the store, the registry's index) are on train's own volume, which
        # only the optional store writer shares; serve and verify mount none of it.
        registry_db = s.adapters.db_path or Path(registry) / "registry.db"
        for f in (s.store.path_in(s.data_dir), registry_db):
            holders = [target for target in mounts if f.is_relative_to(target)]
            if name in ("serve", "verify"):
                assert holders == [], f"{name} mounts {f}"
                continue
            volume, read_only = mounts[max(holders, key=len)]  # the innermost mount
            assert volume != vllm_mounts[registry][0], f"{name}: {f} is on the shared volume"
            assert not read_only
            state.setdefault(volume, set()).add(name)
        if name == "train":  # fine-tunes the weights vLLM serves, from the same volume
            assert args[0] == s.model.path
            (weights,) = [v for t, (v, _) in vllm_mounts.items() if args[0].startswith(t)]
            assert any(m.startswith(f"{weights}:") for m in svc["volumes"])
            assert s.store.writer_in_train  # by default the writer runs inside train
    (local,) = state
    assert state[local] == {"train", "store"}, state
    users = {
        n for n, svc in services.items() if local in {v for v, _ in compose_mounts(svc).values()}
    }
    assert users == {"train", "store", "data-init"}, users


def test_compose_workers_run_real_commands_with_real_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = selfdistill_services()
    commands = {}
    for name, svc in services.items():
        if "entrypoint" in svc:
            continue  # runs another program of the image (hf, chown)
        check_cli([interpolate(str(a)) for a in svc["command"]], f"compose service {name}")
        commands[name] = svc["command"]
        env = {k: interpolate(str(v)) for k, v in svc.get("environment", {}).items()}
        check_env_names(set(env), f"compose service {name}")
        load_with_env(env, tmp_path, monkeypatch)  # raises ConfigError on a bad value
    assert commands == {
        "topics": ["topics", "create"],
        "serve": ["serve"],
        "verify": ["verify"],
        "train": ["train"],
        "store": ["store"],
    }
    prom = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    # Each job's targets: host:port, static or a DNS name (every container of the service).
    targets = {
        j["job_name"]: [t for sc in j.get("static_configs", []) for t in sc["targets"]]
        + [f"{n}:{sd['port']}" for sd in j.get("dns_sd_configs", []) for n in sd["names"]]
        for j in prom["scrape_configs"]
    }
    for name in WORKERS:
        svc = services[name]
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        env = {k: interpolate(str(v)) for k, v in svc["environment"].items()}
        port = load_with_env(env, tmp_path, monkeypatch).metrics.port(name)
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"])
        # Prometheus scrapes each worker where compose runs it.
        assert targets[f"selfdistill-{name}"] == [f"{svc.get('hostname', name)}:{port}"]
    # verify scales: more than one replica, and nothing that ties a container to one name
    # or port. Its hostname (the container id) makes each replica's transactional id its own.
    verify = services["verify"]
    assert verify.get("deploy", {}).get("replicas", 1) >= 2
    assert not {"hostname", "container_name", "ports"} & set(verify), sorted(verify)
    assert "SELFDISTILL_VERIFY__TRANSACTIONAL_ID" not in verify["environment"]
    verify_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "selfdistill-verify")
    assert [sd["names"] for sd in verify_job["dns_sd_configs"]] == [["verify"]]
    # The store writer runs inside train unless the optional `store` profile takes over, and
    # Prometheus finds no store target (and raises no WorkerDown) while it does not run.
    assert services["store"]["profiles"] == ["store"]
    train_env = {k: interpolate(str(v)) for k, v in services["train"]["environment"].items()}
    assert load_with_env(train_env, tmp_path, monkeypatch).store.writer_in_train
    store_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "selfdistill-store")
    assert "static_configs" not in store_job and store_job["dns_sd_configs"]
    for job in prom["scrape_configs"]:  # every job labels its targets with their worker
        worker = job["job_name"].removeprefix("selfdistill-")
        labels = [sc.get("labels", {}).get("worker") for sc in job.get("static_configs", [])]
        relabel = [r.get("replacement") for r in job.get("relabel_configs", [])]
        assert worker in labels + relabel, job["job_name"]


def test_compose_model_download_uses_real_hf_options() -> None:
    svc = compose_services()["model-download"]
    assert svc["entrypoint"] == ["hf"]
    args = [interpolate(str(a)) for a in svc["command"]]
    hf = VENV_BIN / "hf"
    assert hf.exists(), "huggingface_hub's `hf` CLI ships with transformers"
    out = subprocess.run([str(hf), args[0], "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for opt in (a for a in args if a.startswith("--")):
        assert opt in out.stdout, f"hf {args[0]} has no {opt}"
    assert args[args.index("--local-dir") + 1] == "/models/model"


def test_dockerfile_builds_the_package_with_the_pinned_torch() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert re.search(rf"pip install .*{re.escape(torch_pin)}", text)
    assert 'ENTRYPOINT ["selfdistill"]' in text
    assert pyproject["project"]["scripts"]["selfdistill"] == "daemon.operating.cli:app"
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    for src in " ".join(copied).split():
        assert (ROOT / src).exists(), src
    for pkg in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pkg.rstrip("*") in " ".join(copied), f"package {pkg} not copied"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for src in " ".join(copied).split():
        assert f"!{src.rstrip('/')}/" in ignore or f"!{src}" in ignore, src


# ------------------------------------------------------------------ systemd
def read_unit(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(path.read_text())
    return p


def test_systemd_units_run_the_workers_hardened() -> None:
    for worker in WORKERS:
        unit = read_unit(SYSTEMD / f"selfdistill-{worker}.service")
        svc = unit["Service"]
        assert svc["User"] == "selfdistill"
        assert svc["WorkingDirectory"] == "/var/lib/selfdistill"
        assert svc["EnvironmentFile"] == "/etc/selfdistill/env"
        exe, *args = shlex.split(svc["ExecStart"])
        assert exe == "/opt/selfdistill/.venv/bin/selfdistill"
        assert args == ["-c", "/etc/selfdistill/selfdistill.toml", worker]
        check_cli(args, f"selfdistill-{worker}.service")
        assert svc["Restart"] == "on-failure"
        assert svc["KillSignal"] == "SIGTERM"
        assert int(svc["TimeoutStopSec"]) >= 120
        assert svc["NoNewPrivileges"] == "yes" and svc["PrivateTmp"] == "yes"
        assert svc["ProtectSystem"] == "strict"
        assert svc["ReadWritePaths"].split() == ["/var/lib/selfdistill"]
        assert unit["Install"]["WantedBy"] == "selfdistill.target"
    # verify's batches are the slowest to drain
    timeouts = {
        w: int(read_unit(SYSTEMD / f"selfdistill-{w}.service")["Service"]["TimeoutStopSec"])
        for w in WORKERS
    }
    assert timeouts["verify"] == max(timeouts.values())
    # The target starts the default workers; the store writer alone is opt-in (train runs
    # one by default, and a second writer on the store refuses to start).
    target = read_unit(SYSTEMD / "selfdistill.target")
    wants = set(target["Unit"]["Wants"].split())
    assert wants == {f"selfdistill-{w}.service" for w in DEFAULT_WORKERS}
    text = (SYSTEMD / "selfdistill-store.service").read_text()
    assert "SELFDISTILL_STORE__WRITER_IN_TRAIN=false" in text


def test_systemd_env_example_sets_real_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {}
    for line in (SYSTEMD / "env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    assert env
    check_env_names(set(env), "env.example")
    load_with_env(env, tmp_path, monkeypatch)


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The units point at /opt/selfdistill; verify them with the real console script there.
    exe = VENV_BIN / "selfdistill"
    units = []
    for f in [*SYSTEMD.glob("*.service"), SYSTEMD / "selfdistill.target"]:
        text = f.read_text().replace("/opt/selfdistill/.venv/bin/selfdistill", str(exe))
        (tmp_path / f.name).write_text(text)
        units.append(str(tmp_path / f.name))
    r = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    # systemd-analyze exits 0 even for unknown keys and bad values: read what it says.
    complaints = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if str(tmp_path) in line or "selfdistill" in line
    ]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


# ------------------------------------------------------------------ kubernetes
def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """Every manifest, including the optional ones in subdirectories (autoscaling/)."""
    out = []
    for f in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                out.append((str(f.relative_to(K8S)), doc))
    return out


def k8s_workloads() -> dict[str, dict[str, Any]]:
    """The long-running workloads by name: Deployments and StatefulSets."""
    return {
        d["metadata"]["name"]: d
        for _, d in k8s_objects()
        if d["kind"] in ("Deployment", "StatefulSet")
    }


def test_k8s_manifests_are_objects_in_the_namespace() -> None:
    objs = k8s_objects()
    kinds = [d["kind"] for _, d in objs]
    for where, d in objs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), where
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "selfdistill", (where, d["metadata"]["name"])
    assert kinds.count("Deployment") == 2 and kinds.count("StatefulSet") == 1
    assert "Namespace" in kinds and "ConfigMap" in kinds
    assert "PersistentVolumeClaim" in kinds and kinds.count("Service") >= 1
    assert kinds.count("HorizontalPodAutoscaler") == 1
    # `kubectl apply -f deploy/k8s/` applies the top directory only; the HPA is opt-in.
    (hpa_file,) = [w for w, d in objs if d["kind"] == "HorizontalPodAutoscaler"]
    assert "/" in hpa_file
    assert all("/" not in w for w, d in objs if d["kind"] != "HorizontalPodAutoscaler")


def k8s_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    cm = next(d for _, d in k8s_objects() if d["kind"] == "ConfigMap")
    return load_with_env({}, tmp_path, monkeypatch, toml=cm["data"]["selfdistill.toml"])


def test_k8s_workloads_run_real_commands_with_probes_and_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = k8s_config(tmp_path, monkeypatch)  # ConfigError if the ConfigMap is wrong
    assert settings.engine.kind == "openai" and settings.metrics.host == "0.0.0.0"
    objs = [d for _, d in k8s_objects()]
    claims = {d["metadata"]["name"]: d for d in objs if d["kind"] == "PersistentVolumeClaim"}
    configmaps = {d["metadata"]["name"] for d in objs if d["kind"] == "ConfigMap"}
    workloads = k8s_workloads()
    for d in [*workloads.values(), *(d for d in objs if d["kind"] == "Job")]:
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        templates = {c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
        for c in pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes) | templates
            assert c["resources"]["requests"], d["metadata"]["name"]
            env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
            check_env_names({k for k in env if k.startswith("SELFDISTILL_")}, c["name"])
            if c["command"] == ["selfdistill"]:
                check_cli(c["args"], f"k8s {d['metadata']['name']}")
                mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
                assert mounts["/etc/selfdistill"]["name"] == "config"
                assert env["SELFDISTILL_CONFIG"] == "/etc/selfdistill/selfdistill.toml"
    data_dir = str(settings.data_dir)
    registry = str(settings.adapters.path(settings.data_dir))
    assert settings.adapters.db_path is not None
    sqlite_files = [settings.store.path_in(settings.data_dir), settings.adapters.db_path]
    assert set(workloads) == {f"selfdistill-{w}" for w in K8S_KINDS}
    for worker, kind in K8S_KINDS.items():
        d = workloads[f"selfdistill-{worker}"]
        assert d["kind"] == kind, worker
        spec = d["spec"]
        pod = spec["template"]["spec"]
        # The worker's container, and beside verify's only its sandbox (security tests).
        c = next(c for c in pod["containers"] if c["name"] == worker)
        others = {x["name"] for x in pod["containers"]} - {worker}
        assert others == ({"sandbox"} if worker == "verify" else set()), worker
        assert c["args"] == [worker]
        port = next(p for p in c["ports"] if p["name"] == "metrics")
        assert port["containerPort"] == settings.metrics.port(worker)
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port["containerPort"])
        assert pod["terminationGracePeriodSeconds"] >= 60
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        # The adapter files are where the config says, on the shared claim: written by train
        # only, read-only everywhere else.
        claim = volumes[mounts[registry]["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim == "selfdistill-adapters"
        assert mounts[registry].get("readOnly", False) == (worker != "train"), worker
        if worker == "train":
            # One pod with its own disk at data_dir for the SQLite files, which are not on
            # the shared claim; the store writer runs in it.
            assert spec["replicas"] == 1
            assert spec["updateStrategy"]["type"] == "RollingUpdate"
            (template,) = spec["volumeClaimTemplates"]
            assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
            assert mounts[data_dir]["name"] == template["metadata"]["name"]
            assert template["metadata"]["name"] not in volumes  # not shadowed by a volume
            for f in sqlite_files:
                assert f.is_relative_to(data_dir) and not f.is_relative_to(registry), f
            assert settings.store.writer_in_train
            assert "affinity" not in pod  # no longer tied to verify's node by a shared disk
            headless = next(
                o
                for o in objs
                if o["kind"] == "Service" and o["metadata"]["name"] == spec["serviceName"]
            )
            assert headless["spec"]["clusterIP"] == "None"
            assert headless["spec"]["selector"].items() <= pod_labels(d).items()
        else:
            # serve and verify keep no state: no data volume, no claim but the adapter files,
            # any number of replicas rolled one at a time.
            assert data_dir not in mounts, f"{worker} mounts a data volume"
            for m in mounts.values():
                v = volumes[m["name"]]
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] == "selfdistill-adapters"
                    assert m.get("readOnly") is True
            assert "volumeClaimTemplates" not in spec
            assert spec["replicas"] >= 2
            assert spec["strategy"]["type"] == "RollingUpdate"
            assert "SELFDISTILL_VERIFY__TRANSACTIONAL_ID" not in {e["name"] for e in c["env"]}
    rwx = claims["selfdistill-adapters"]
    assert rwx["spec"]["accessModes"] == ["ReadWriteMany"]
    # The old node-bound data claim is gone: train's disk comes from its template.
    assert set(claims) == {"selfdistill-adapters", "selfdistill-models"}


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_k8s_verify_autoscales_on_the_candidates_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = k8s_config(tmp_path, monkeypatch)
    (hpa,) = [d for _, d in k8s_objects() if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    verify = k8s_workloads()["selfdistill-verify"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        verify["apiVersion"],
        verify["kind"],
        verify["metadata"]["name"],
    )
    # Replicas beyond the partitions of candidates get no partition.
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["maxReplicas"] <= settings.topics.partitions
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    external = metric["external"]
    name = external["metric"]["name"]
    assert name in exported_names()
    selector = external["metric"]["selector"]["matchLabels"]
    assert selector == {"topic": settings.topics.candidates}
    check_selectors(f'{name}{{topic="{selector["topic"]}"}}', "verify HPA")
    assert external["target"]["type"] == "AverageValue"
    # The prometheus-adapter rule in the comment serves that metric.
    text = (K8S / "autoscaling" / "verify-hpa.yaml").read_text()
    assert f"seriesQuery: '{name}{{" in text and f"as: {name}" in text


def test_k8s_metrics_services_select_the_workers() -> None:
    objs = [d for _, d in k8s_objects()]
    workloads = list(k8s_workloads().values())
    services = [d for d in objs if d["kind"] == "Service"]
    covered = set()
    for svc in services:
        sel = svc["spec"]["selector"]
        match = [d for d in workloads if sel.items() <= pod_labels(d).items()]
        assert len(match) == 1, svc["metadata"]["name"]
        if svc["spec"].get("clusterIP") == "None":
            # A StatefulSet's governing Service, not a scrape target (no double scrape).
            assert match[0]["spec"].get("serviceName") == svc["metadata"]["name"]
            assert "prometheus.io/scrape" not in svc["metadata"].get("annotations", {})
            continue
        c = match[0]["spec"]["template"]["spec"]["containers"][0]  # the worker's (above)
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] in named
        ann = svc["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == str(named[port["targetPort"]])
        covered.add(match[0]["metadata"]["name"])
    assert covered == {f"selfdistill-{w}" for w in K8S_KINDS}


def test_the_deploy_tree_is_complete() -> None:
    for rel in (
        "README.md",
        "Dockerfile",
        "docker-compose.yml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "grafana/dashboards/selfdistill.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/selfdistill.yml",
        "k8s/autoscaling/verify-hpa.yaml",
        *(f"systemd/selfdistill-{w}.service" for w in WORKERS),
    ):
        assert (DEPLOY / rel).is_file(), rel
