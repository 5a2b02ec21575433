"""The shipped deployments pass their own sandbox check: in each, verify sends candidate code
to a sandbox that is isolated from it (verify.sandbox.socket), and that sandbox holds no
secret, no volume but its socket's, no network of the worker's and a read-only root.

Kubernetes and compose cannot run here, so these read the manifests; the server itself, in a
network namespace of its own as the systemd unit and the compose service give it, is run for
real in test_sandbox_fail_closed.py.
"""

from __future__ import annotations

import shlex

from tests.test_deploy import SYSTEMD, compose_services, k8s_workloads, read_unit

SERVE = ["sandbox", "serve", "--socket"]
CLEAN_ENV = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "selfdistill"]


def test_compose_verify_uses_a_sandbox_service_with_nothing_in_it() -> None:
    services = compose_services()
    verify, sandbox = services["verify"], services["sandbox"]
    socket = verify["environment"]["SELFDISTILL_VERIFY__SANDBOX__SOCKET"]
    assert sandbox["entrypoint"] == CLEAN_ENV and sandbox["command"][:3] == SERVE
    served = sandbox["command"][3]
    # the same volume, seen at the two paths
    [shared] = [v.split(":")[0] for v in sandbox["volumes"]]
    assert sandbox["volumes"] == [f"{shared}:/tmp"] and served.startswith("/tmp/")
    assert f"{shared}:{socket.rsplit('/', 1)[0]}" in verify["volumes"]
    assert socket.rsplit("/", 1)[1] == served.rsplit("/", 1)[1]
    assert sandbox["network_mode"] == "none" and sandbox["read_only"] is True
    assert "environment" not in sandbox and "env_file" not in sandbox
    assert sandbox["cap_drop"] == ["ALL"] and "SYS_ADMIN" not in sandbox["cap_add"]
    assert "no-new-privileges:true" in sandbox["security_opt"]


def test_k8s_verify_pod_runs_code_in_a_sidecar_with_no_secrets_or_token() -> None:
    pod = k8s_workloads()["selfdistill-verify"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert not pod.get("shareProcessNamespace")
    containers = {c["name"]: c for c in pod["containers"]}
    verify, sandbox = containers["verify"], containers["sandbox"]
    env = {e["name"]: e.get("value") for e in verify["env"]}
    socket = env["SELFDISTILL_VERIFY__SANDBOX__SOCKET"]
    assert sandbox["command"] == CLEAN_ENV and sandbox["args"][:3] == SERVE
    assert "env" not in sandbox and "envFrom" not in sandbox
    [mount] = sandbox["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]  # nothing in it but the socket and scratch
    assert {"name": mount["name"], "mountPath": socket.rsplit("/", 1)[0]} in verify["volumeMounts"]
    security = sandbox["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_systemd_verify_uses_the_sandbox_unit_which_has_no_network_or_secrets() -> None:
    verify = read_unit(SYSTEMD / "selfdistill-verify.service")
    sandbox = read_unit(SYSTEMD / "selfdistill-sandbox.service")
    env = dict(e.split("=", 1) for e in verify["Service"]["Environment"].split("\n") if e)
    socket = env["SELFDISTILL_VERIFY__SANDBOX__SOCKET"]
    assert "selfdistill-sandbox.service" in verify["Unit"]["Wants"].split()
    svc = sandbox["Service"]
    exe, *args = shlex.split(svc["ExecStart"])
    assert args == [*SERVE, socket] and exe.endswith("/selfdistill")
    assert "EnvironmentFile" not in svc and "-c" not in args
    assert svc["PrivateNetwork"] == "yes" and svc["ProtectSystem"] == "strict"
    inaccessible = {p.lstrip("-") for p in svc["InaccessiblePaths"].split()}
    assert {"/var/lib/selfdistill", "/etc/selfdistill"} <= inaccessible
    assert socket.startswith(f"/run/{svc['RuntimeDirectory']}/")
    assert set(svc["RestrictNamespaces"].split()) == {"net", "pid", "mnt"}
