"""The deployment files: Kubernetes manifests, the container image and the systemd unit.

Neither Kubernetes nor a container engine is available to the suite. So the kustomization is
built by the real ``kubectl kustomize`` (Debian's kubernetes-client, which .ci/install-deps
installs when no kubectl is there), validated offline against the Kubernetes schemas, and
checked for agreement with the authproxy and nginx configurations it carries. Then the pod's
processes run for real on this machine: authproxy from the ConfigMap's TOML, nginx from the
ConfigMap's nginx.conf, the probes as the kubelet runs them, the Secret updated as the kubelet
updates it, with the pod's paths moved under a temporary directory.
"""

from __future__ import annotations

import base64
import configparser
import copy
import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from authproxy.config import SHUTDOWN_TIMEOUT, load_config
from authproxy.listen import parse_listen

from .conftest import bcrypt_hash
from .servers import (
    NGINX,
    NGINX_DIR,
    REPO,
    Answer,
    free_port,
    http_request,
    http_status,
    render_upstream,
    start_authproxy,
    start_echo_upstream,
    unsafe_access_logs,
    wait_until,
)

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "authproxy.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
# The oldest Kubernetes the pod needs (native sidecars and the preStop sleep action on by
# default) and a current one.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
DEPLOYMENT = "protected-app"
AUTHPROXY, NGINX_CONTAINER, APP = "authproxy", "nginx", "app"
CONFIG_MAP, NGINX_CONFIG_MAP, USERS_SECRET = "authproxy-config", "nginx-config", "authproxy-users"
SOCKET_VOLUME = "authproxy-socket"
# Where Python's tempfile, and so authproxy's multi-worker state, goes without TMPDIR.
TEMP_DIR = "/tmp"
REQUEST_TIMEOUT = 5.0


# -- rendering the kustomization -----------------------------------------------------------------


def render_kustomization(root: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize root`` builds, as ``kubectl apply -k`` would apply
    them. kustomize refuses, among others, any file from outside ``root``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: .ci/install-deps installs Debian's kubernetes-client")
    built = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc is not None]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render_kustomization(K8S)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name``, or generated from a generator of that name
    (kustomize appends a hash of the content: ``name-5bgg4d7kc2``)."""
    named = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    matches = [o for o in objects
               if o["kind"] == kind and named.fullmatch(o["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} {kind} {name} rendered"
    return matches[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    return spec


def all_containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = pod_spec(objects)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [c for c in all_containers(objects) if c["name"] == name]
    assert len(matches) == 1, f"{len(matches)} containers named {name}"
    return matches[0]


def mount_path(objects: list[dict[str, Any]], container_name: str, volume: str) -> str:
    """Where ``volume`` is mounted in the container; fails if it is not, or more than once."""
    mounts = [m for m in container(objects, container_name).get("volumeMounts", [])
              if m["name"] == volume]
    assert len(mounts) == 1, f"{volume} mounted {len(mounts)} times in {container_name}"
    path: str = mounts[0]["mountPath"]
    return path


def config_text(objects: list[dict[str, Any]], config_map: str, key: str) -> str:
    text: str = find(objects, "ConfigMap", config_map)["data"][key]
    return text


def toml_text(objects: list[dict[str, Any]]) -> str:
    """The authproxy TOML the container reads: its --config path, found in the ConfigMap
    mounted there."""
    args = container(objects, AUTHPROXY)["args"]
    path = PurePosixPath(args[args.index("--config") + 1])
    assert str(path.parent) == mount_path(objects, AUTHPROXY, CONFIG_MAP)
    return config_text(objects, CONFIG_MAP, path.name)


def socket_path(objects: list[dict[str, Any]]) -> str:
    """The one address authproxy listens on: a unix socket."""
    listen = tomllib.loads(toml_text(objects))["server"]["listen"]
    assert len(listen) == 1
    address = parse_listen(listen[0])
    assert address.is_unix, f"authproxy listens on {address}: reachable from other pods"
    return address.path


def users_secret_text(objects: list[dict[str, Any]], key: str) -> str:
    secret = find(objects, "Secret", USERS_SECRET)
    if key in secret.get("stringData", {}):
        text: str = secret["stringData"][key]
        return text
    return base64.b64decode(secret["data"][key]).decode()


# -- the manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(objects: list[dict[str, Any]], version: str) -> None:
    kinds = set()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
        kinds.add(obj["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= kinds
    # The validator is strict: a misspelt field would be caught.
    misspelt = json.loads(json.dumps(find(objects, "Deployment", DEPLOYMENT)))
    misspelt["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)


def test_nginx_snippets_in_the_config_map_are_the_repositorys(
    objects: list[dict[str, Any]],
) -> None:
    """Copies, since kustomize will not read nginx/: byte for byte, except the upstream's
    server line, which names authproxy's socket exactly as the suite's own nginx tests do."""
    for name in ("authproxy-auth.conf", "authproxy-protect.conf"):
        assert config_text(objects, NGINX_CONFIG_MAP, name) == (NGINX_DIR / name).read_text(
            encoding="utf-8"), f"deploy/kubernetes/nginx/{name} differs from nginx/{name}"
    assert config_text(objects, NGINX_CONFIG_MAP, "authproxy-upstream.conf") == render_upstream(
        f"unix:{socket_path(objects)}")


def test_nginx_includes_come_from_its_config_map(objects: list[dict[str, Any]]) -> None:
    command = container(objects, NGINX_CONTAINER)["command"]
    conf = PurePosixPath(command[command.index("-c") + 1])
    directory = mount_path(objects, NGINX_CONTAINER, NGINX_CONFIG_MAP)
    assert str(conf.parent) == directory
    includes = re.findall(r"^\s*include\s+(\S+);", config_text(objects, NGINX_CONFIG_MAP,
                                                                conf.name), re.MULTILINE)
    assert len(includes) == 3
    for include in includes:
        path = PurePosixPath(include)
        assert str(path.parent) == directory
        config_text(objects, NGINX_CONFIG_MAP, path.name)  # a KeyError if it is missing


def test_authproxy_config_is_valid_and_agrees_with_the_pod(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    text = toml_text(objects)
    path = tmp_path / "authproxy.toml"
    path.write_text(text, encoding="utf-8")
    users = tmp_path / "users.htpasswd"
    users.write_text(users_secret_text(objects, "users.htpasswd"), encoding="utf-8")
    config = load_config(str(path), environ={"AUTHPROXY_BASIC_USERS_FILE": str(users)})
    assert config.worker_count == 1
    # The socket is in the emptyDir that nginx mounts too, and the app does not.
    socket_dir = str(PurePosixPath(socket_path(objects)).parent)
    assert mount_path(objects, AUTHPROXY, SOCKET_VOLUME) == socket_dir
    assert mount_path(objects, NGINX_CONTAINER, SOCKET_VOLUME) == socket_dir
    assert all(m["name"] != SOCKET_VOLUME for m in container(objects, APP).get("volumeMounts", []))
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == SOCKET_VOLUME)
    assert "emptyDir" in volume
    upstream = config_text(objects, NGINX_CONFIG_MAP, "authproxy-upstream.conf")
    assert re.findall(r"^\s*server\s+(\S+);", upstream, re.MULTILINE) == [
        f"unix:{socket_path(objects)}"]


def test_users_secret_is_mounted_as_a_directory_where_users_file_points(
    objects: list[dict[str, Any]],
) -> None:
    """A subPath mount is never updated by the kubelet: a changed password would not arrive."""
    users_file = PurePosixPath(tomllib.loads(toml_text(objects))["basic"]["users_file"])
    volume = next(v for v in pod_spec(objects)["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == USERS_SECRET
    assert volume["secret"]["defaultMode"] == 0o440  # group 10001 (fsGroup) reads it
    assert pod_spec(objects)["securityContext"]["fsGroup"] == container(
        objects, AUTHPROXY)["securityContext"]["runAsGroup"]
    assert mount_path(objects, AUTHPROXY, volume["name"]) == str(users_file.parent)
    users_secret_text(objects, users_file.name)  # the Secret has that key
    for each in all_containers(objects):
        for mount in each.get("volumeMounts", []):
            assert "subPath" not in mount and "subPathExpr" not in mount, (each["name"], mount)
        if each["name"] != AUTHPROXY:
            assert all(m["name"] != volume["name"] for m in each.get("volumeMounts", []))


def test_every_container_is_locked_down(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key)
    assert not any("hostPath" in v for v in spec["volumes"])
    assert {c["name"] for c in all_containers(objects)} == {AUTHPROXY, NGINX_CONTAINER, APP}
    for each in all_containers(objects):
        context = each["securityContext"]
        assert context["runAsNonRoot"] is True, each["name"]
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, each["name"]
        assert context["readOnlyRootFilesystem"] is True, each["name"]
        assert context["allowPrivilegeEscalation"] is False, each["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, each["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, each["name"]
        assert "privileged" not in context or context["privileged"] is False
        for kind in ("requests", "limits"):
            assert set(each["resources"][kind]) == {"cpu", "memory"}, (each["name"], kind)


def test_authproxy_is_a_sidecar_probed_over_its_socket(objects: list[dict[str, Any]]) -> None:
    """The kubelet's httpGet goes to the pod's IP, where authproxy listens on nothing: its
    probes are exec probes running probe.py against the socket nginx uses."""
    proxy = container(objects, AUTHPROXY)
    assert proxy in pod_spec(objects)["initContainers"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar, not a one-shot init
    probes = {kind: proxy[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    config_dir = mount_path(objects, AUTHPROXY, CONFIG_MAP)
    for kind, probe in probes.items():
        assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set(), kind
        python, isolated, script, path, socket = probe["exec"]["command"]
        assert (python, isolated) == ("python", "-I")
        assert str(PurePosixPath(script).parent) == config_dir
        config_text(objects, CONFIG_MAP, PurePosixPath(script).name)
        assert path == paths[kind]
        assert socket == socket_path(objects)
        assert probe["timeoutSeconds"] > 2  # probe.py's own timeout is 2 s


def test_ports_agree_across_nginx_the_service_and_the_network_policy(
    objects: list[dict[str, Any]],
) -> None:
    nginx_conf = config_text(objects, NGINX_CONFIG_MAP, "nginx.conf")
    listens = {int(p) for p in re.findall(r"^\s*listen\s+(\d+);", nginx_conf, re.MULTILINE)}
    nginx = container(objects, NGINX_CONTAINER)
    ports = {p["name"]: p["containerPort"] for p in nginx["ports"]}
    assert set(ports.values()) == listens
    assert all(p >= 1024 for p in listens)  # non-root
    assert not any("ports" in c for c in all_containers(objects) if c is not nginx)
    for kind in ("livenessProbe", "readinessProbe"):
        probe = nginx[kind]["httpGet"]
        assert probe["port"] in ports
        assert f"location = {probe['path']} " in nginx_conf
    pod_labels = find(objects, "Deployment", DEPLOYMENT)["spec"]["template"]["metadata"]["labels"]
    service = find(objects, "Service", DEPLOYMENT)["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["ports"]} == set(ports)
    policy = find(objects, "NetworkPolicy", DEPLOYMENT)["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == set(ports)
    # The app listens on loopback only, where nginx's upstream finds it.
    (listen,) = [a for a in container(objects, APP)["args"] if a.startswith("-listen=")]
    address = listen.removeprefix("-listen=")
    assert address.startswith("127.0.0.1:")
    assert re.search(r"upstream app \{\s*server " + re.escape(address) + ";", nginx_conf)


def test_only_the_monitoring_namespace_may_reach_the_metrics_port(
    objects: list[dict[str, Any]],
) -> None:
    """A rule without "from" admits every pod of every namespace: the metrics port's rule
    names a namespace (by label) and its pods, and no open rule lists that port."""
    policy = find(objects, "NetworkPolicy", DEPLOYMENT)["spec"]
    rules = [r for r in policy["ingress"] if any(p["port"] == "metrics" for p in r["ports"])]
    assert rules, "no rule for the metrics port"
    for rule in rules:
        assert rule.get("from"), f"metrics reachable from every pod: {rule}"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            assert peer.get("namespaceSelector", {}).get("matchLabels"), peer
            assert peer.get("podSelector", {}).get("matchLabels"), peer
        assert [p["port"] for p in rule["ports"]] == ["metrics"], rule


def test_the_pods_nginx_believes_no_pods_forwarded_address(
    objects: list[dict[str, Any]],
) -> None:
    """set_real_ip_from naming the pod network lets any pod choose, in X-Forwarded-For, the
    address authproxy counts its failures by (and an address a user is known from). As
    shipped it names no private or shared address: the operator sets the ingress
    controller's (deploy/README.md)."""
    nginx_conf = config_text(objects, NGINX_CONFIG_MAP, "nginx.conf")
    trusted = re.findall(r"^\s*set_real_ip_from\s+(\S+);", nginx_conf, re.MULTILINE)
    assert trusted, "no set_real_ip_from: the README's instruction has nothing to edit"
    pod_networks = [ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")]
    for value in trusted:
        network = ipaddress.ip_network(value, strict=False)
        assert not any(network.overlaps(pods) for pods in pod_networks
                       if pods.version == network.version), value
    assert "set_real_ip_from" in (DEPLOY / "README.md").read_text(encoding="utf-8")


def metrics_location(nginx_conf: str) -> str:
    match = re.search(r"location = /metrics \{(.*?)\n        \}", nginx_conf, re.DOTALL)
    assert match, "no location = /metrics"
    return match.group(1)


def test_the_metrics_location_sends_authproxy_a_fixed_path_and_no_client_address(
    objects: list[dict[str, Any]],
) -> None:
    """Its proxy_pass names the path (without one nginx forwards the client's URI as sent),
    and the client's X-Real-IP and X-Forwarded-For are cleared, not forwarded."""
    location = metrics_location(config_text(objects, NGINX_CONFIG_MAP, "nginx.conf"))
    assert re.search(r"^\s*proxy_pass http://authproxy_upstream/metrics;", location, re.M)
    for header in ("X-Real-IP", "X-Forwarded-For", "Authorization"):
        assert re.search(rf'^\s*proxy_set_header {header} "";', location, re.M), header


def with_workers(objects: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """The rendered objects with ``server.workers`` set in authproxy's TOML."""
    changed = copy.deepcopy(objects)
    config_map = find(changed, "ConfigMap", CONFIG_MAP)
    key = PurePosixPath(container(changed, AUTHPROXY)["args"][-1]).name
    text = config_map["data"][key]
    assert text.count("[server]\n") == 1
    config_map["data"][key] = text.replace("[server]\n", f"[server]\nworkers = {workers}\n")
    return changed


def test_authproxy_has_a_writable_temp_dir_for_several_workers(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """With workers = 2 authproxy shares metrics through files in a temporary directory; the
    root filesystem is read-only, so /tmp must be a writable emptyDir of its own."""
    two = with_workers(objects, 2)
    path = tmp_path / "authproxy.toml"
    path.write_text(toml_text(two), encoding="utf-8")
    users = tmp_path / "users.htpasswd"
    users.write_text("", encoding="utf-8")
    config = load_config(str(path), environ={"AUTHPROXY_BASIC_USERS_FILE": str(users)})
    assert config.worker_count == 2
    mounts = [m for m in container(two, AUTHPROXY)["volumeMounts"]
              if m["mountPath"] == TEMP_DIR]
    assert len(mounts) == 1, f"nothing writable at {TEMP_DIR} in the authproxy container"
    assert not mounts[0].get("readOnly")
    volume = next(v for v in pod_spec(two)["volumes"] if v["name"] == mounts[0]["name"])
    assert "emptyDir" in volume, volume
    assert all(m["name"] != volume["name"]
               for c in all_containers(two) if c["name"] != AUTHPROXY
               for m in c.get("volumeMounts", [])), "authproxy's temporary files are shared"


def test_the_pods_access_log_holds_no_client_user_id_or_query_string(
    objects: list[dict[str, Any]],
) -> None:
    """nginx's default ("combined") format logs $remote_user, the user-id of any Basic header
    the client sent, checked or not, and the query string in $request and $http_referer."""
    nginx_conf = config_text(objects, NGINX_CONFIG_MAP, "nginx.conf")
    assert "access_log /dev/stdout" in nginx_conf, "the pod's nginx logs no requests"
    assert unsafe_access_logs(nginx_conf) == []


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_the_build_context_is_only_what_the_containerfile_copies() -> None:
    """.dockerignore shuts out everything else: .venv, and .demo with its passwords and keys."""
    lines = [line for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {source.rstrip("/") for word, args in containerfile_instructions()
              if word == "COPY" and not args.startswith("--from")
              for source in args.split()[:-1]}
    assert allowed == copied


def test_containerfile_runs_what_the_manifest_runs(objects: list[dict[str, Any]]) -> None:
    instructions = containerfile_instructions()
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(stages) >= 2, "a multi-stage build"
    final = instructions[stages[-1]:]
    assert final[0][1].startswith("python:3.11-slim")  # the probes run its python
    last = {word: args for word, args in final}
    proxy = container(objects, AUTHPROXY)
    assert json.loads(last["ENTRYPOINT"]) == proxy["command"]
    assert json.loads(last["CMD"]) == proxy["args"]
    user, _, group = last["USER"].partition(":")
    assert (int(user), int(group)) == (proxy["securityContext"]["runAsUser"],
                                       proxy["securityContext"]["runAsGroup"])
    # The build stage copies everything the wheel is built from: the data files too.
    copied = {word for w, args in instructions[:stages[-1]] if w == "COPY"
              for word in args.split()[:-1]}
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    readme = setup["metadata"]["long_description"].removeprefix("file:").strip()
    data = {PurePosixPath(line).parts[0]
            for files in setup["options.data_files"].values() for line in files.split()}
    assert {"pyproject.toml", "setup.cfg", readme, "authproxy", *data} <= copied


# -- the pod's processes, for real ---------------------------------------------------------------


class PodPaths:
    """Where each of the pod's mounts lives on this machine, under one temporary directory."""

    def __init__(self, root: Path, mounts: dict[str, str]) -> None:
        self.root = root
        self.moves = {pod: root / pod.lstrip("/") for pod in mounts.values()}
        for here in self.moves.values():
            here.mkdir(parents=True, exist_ok=True)

    def here(self, pod_path: str) -> Path:
        for pod, local in self.moves.items():
            if pod_path == pod or pod_path.startswith(pod + "/"):
                return local / pod_path[len(pod):].lstrip("/")
        raise ValueError(f"{pod_path} is on no mounted volume")

    def relocate(self, text: str) -> str:
        """``text`` with every path on a pod mount replaced by its local path (in one pass:
        the local paths themselves start with /tmp, which may be a mount)."""
        pods = sorted(self.moves, key=len, reverse=True)
        pattern = r"(?<![\w./-])(" + "|".join(map(re.escape, pods)) + r")(?=[/\s;\"']|$)"
        return re.sub(pattern, lambda m: str(self.moves[m.group(1)]), text, flags=re.M)


def pod_paths(objects: list[dict[str, Any]], root: Path) -> PodPaths:
    mounts = {f"{c['name']}:{m['name']}": m["mountPath"]
              for c in all_containers(objects) for m in c.get("volumeMounts", [])}
    return PodPaths(root, mounts)


def write_secret_volume(directory: Path, files: dict[str, str], generation: int) -> None:
    """Write or update ``directory`` as the kubelet's AtomicWriter does: the files in a new
    hidden directory, the ``..data`` symlink swapped to it by one rename, each visible name a
    symlink through ``..data``; then the old generation removed."""
    version = directory / f"..generation_{generation}"
    version.mkdir()
    for name, text in files.items():
        (version / name).write_text(text, encoding="utf-8")
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    (directory / "..data_tmp").symlink_to(version.name)
    os.replace(directory / "..data_tmp", data)
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old:
        shutil.rmtree(directory / old)


def write_config_maps(objects: list[dict[str, Any]], paths: PodPaths) -> None:
    for container_name, config_map in ((AUTHPROXY, CONFIG_MAP),
                                       (NGINX_CONTAINER, NGINX_CONFIG_MAP)):
        directory = paths.here(mount_path(objects, container_name, config_map))
        for key, text in find(objects, "ConfigMap", config_map)["data"].items():
            (directory / key).write_text(paths.relocate(text), encoding="utf-8")


def probe_commands(objects: list[dict[str, Any]], paths: PodPaths) -> dict[str, list[str]]:
    """authproxy's probes as the kubelet would exec them, with this machine's paths."""
    proxy = container(objects, AUTHPROXY)
    commands = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        python, *rest = proxy[kind]["exec"]["command"]
        assert python == "python"
        commands[kind] = [sys.executable, *(paths.relocate(arg) for arg in rest)]
    return commands


def run_probe(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)


@contextmanager
def authproxy_as_in_the_pod(objects: list[dict[str, Any]], paths: PodPaths) -> Iterator[None]:
    """authproxy serve with the ConfigMap's TOML, its paths relocated, until the block ends;
    its temporary directory the one mounted at /tmp in its container."""
    text = paths.relocate(toml_text(objects))
    listen = [f"unix:{paths.here(socket_path(objects))}"]
    temp = [m["mountPath"] for m in container(objects, AUTHPROXY)["volumeMounts"]
            if m["mountPath"] == TEMP_DIR]
    env = {"TMPDIR": str(paths.here(temp[0]))} if temp else None
    with start_authproxy(text, listen, paths.root / "authproxy-run", env):
        yield


@pytest.fixture
def pod(objects: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> PodPaths:
    """The pod's ConfigMaps and Secret written under a short temporary directory (a unix
    socket path has room for about 107 bytes)."""
    paths = pod_paths(objects, tmp_path_factory.mktemp("pod"))
    write_config_maps(objects, paths)
    users_dir = paths.here(mount_path(objects, AUTHPROXY, "authproxy-users"))
    write_secret_volume(users_dir, {"users.htpasswd": users_secret_text(objects, "users.htpasswd")}, 1)
    return paths


def test_probes_pass_against_authproxy_and_fail_without_it(
    objects: list[dict[str, Any]], pod: PodPaths
) -> None:
    commands = probe_commands(objects, pod)
    with authproxy_as_in_the_pod(objects, pod):
        for kind, command in commands.items():
            result = run_probe(command)
            assert result.returncode == 0, (kind, result.stderr)
        not_found = run_probe([*commands["livenessProbe"][:-2], "/no-such-path",
                               commands["livenessProbe"][-1]])
        assert not_found.returncode == 1, not_found.stderr
    result = run_probe(commands["livenessProbe"])
    assert result.returncode == 1, result.stderr


def test_a_restarted_authproxy_reuses_the_socket_left_in_the_empty_dir(
    objects: list[dict[str, Any]], pod: PodPaths
) -> None:
    """A container killed by its liveness probe leaves its socket file in the emptyDir,
    which outlives it; the restarted authproxy must still start."""
    socket = pod.here(socket_path(objects))
    config = pod.root / "killed.toml"
    config.write_text(pod.relocate(toml_text(objects)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: http_status(f"unix:{socket}", "/healthz") == 200, "authproxy",
                   process)
    finally:
        process.kill()
        process.wait()
    assert socket.is_socket()
    with authproxy_as_in_the_pod(objects, pod):
        assert http_status(f"unix:{socket}", "/healthz") == 200


def request(port: int, path: str, *headers: tuple[str, str]) -> Answer:
    return http_request(f"http://127.0.0.1:{port}{path}", headers=headers,
                        timeout=REQUEST_TIMEOUT)


@contextmanager
def nginx_as_in_the_pod(
    objects: list[dict[str, Any]], paths: PodPaths, app_address: str
) -> Iterator[dict[str, int]]:
    """nginx -c the ConfigMap's nginx.conf (written by the ``pod`` fixture), its ports and
    the app's address moved to free ones here. Yields {container port name: local port}."""
    nginx = container(objects, NGINX_CONTAINER)
    conf = paths.here(nginx["command"][nginx["command"].index("-c") + 1])
    text = conf.read_text(encoding="utf-8")
    ports = {p["name"]: free_port() for p in nginx["ports"]}
    for port in nginx["ports"]:
        text, count = re.subn(rf"^(\s*listen\s+){port['containerPort']};",
                              rf"\g<1>127.0.0.1:{ports[port['name']]};", text, flags=re.M)
        assert count == 1, port
    (app,) = [a.removeprefix("-listen=") for a in container(objects, APP)["args"]
              if a.startswith("-listen=")]
    assert text.count(f"server {app};") == 1
    text = text.replace(f"server {app};", f"server {app_address};")
    if os.geteuid() == 0:  # as in tests/servers.py: workers must reach the temporary dirs
        text = "user root;\n" + text
    conf.write_text(text, encoding="utf-8")
    error_log = paths.root / "nginx-error.log"
    with error_log.open("wb") as log:
        process = subprocess.Popen(
            [NGINX, "-p", str(paths.root), "-c", str(conf), "-e", str(error_log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: request_ok(ports["http"]), "nginx", process)
        yield ports
    finally:
        process.send_signal(signal.SIGQUIT)  # the nginx image's stop signal: graceful
        status = process.wait(timeout=REQUEST_TIMEOUT * 2)
    assert status == 0, error_log.read_text(errors="replace")
    assert "[emerg]" not in error_log.read_text(errors="replace")


def request_ok(port: int) -> bool:
    try:
        return request(port, "/nginx-healthz").status == 200
    except OSError:
        return False


def test_the_pod_serves_and_picks_up_a_secret_update(
    objects: list[dict[str, Any]], pod: PodPaths
) -> None:
    """nginx and authproxy as configured by the ConfigMaps; the Secret starts without users,
    then gains one the way the kubelet updates a mounted Secret, and authproxy picks it up."""
    basic = ("Authorization", "Basic " + base64.b64encode(b"alice:Corr3ct-horse").decode())
    with (start_echo_upstream() as app, authproxy_as_in_the_pod(objects, pod),
          nginx_as_in_the_pod(objects, pod, app.address) as ports):
        denied = request(ports["http"], "/app/")
        assert denied.status == 401
        assert denied.header_values("WWW-Authenticate") == [
            'Basic realm="authproxy", charset="UTF-8"']
        # As shipped, nginx's set_real_ip_from names no real range: every client would be the
        # ingress controller's address, one key for all, so authproxy believes no forwarded
        # address (a socket "other" users may connect to) and bans count user-ids only.
        socket_file = pod.here(socket_path(objects)).stat()
        assert stat.S_IMODE(socket_file.st_mode) & stat.S_IWOTH
        assert request(ports["http"], "/app/", basic).status == 401
        assert not app.requests

        users = users_secret_text(objects, "users.htpasswd")
        users_dir = pod.here(mount_path(objects, AUTHPROXY, "authproxy-users"))
        write_secret_volume(users_dir, {"users.htpasswd": users + "alice:"
                                        + bcrypt_hash("Corr3ct-horse") + "\n"}, 2)
        # The watcher stats the file every second. Waited for on /metrics, not by retrying
        # alice: each 401 would count towards a ban of her and of this address.
        reloaded = 'authproxy_user_table_reloads_total{outcome="ok"} 1.0'
        wait_until(lambda: reloaded in request(ports["metrics"], "/metrics").body.decode(),
                   "the Secret update picked up", deadline=15)
        assert request(ports["http"], "/app/", basic).status == 200
        (seen,) = app.received(lambda r: r.path == "/app/")
        assert seen.header_values("X-Auth-User") == ["alice"]

        metrics = request(ports["metrics"], "/metrics")
        assert metrics.status == 200 and b"# TYPE" in metrics.body
        assert request(ports["metrics"], "/auth", basic).status == 404
        assert run_probe(probe_commands(objects, pod)["readinessProbe"]).returncode == 0

        # Only the app's named paths reach it, for alice too.
        for path in ("/", "/APP/x", "/App/", "/app", f"/{'x' * 8}"):
            assert request(ports["http"], path, basic).status != 200, path
        assert [r.path for r in app.requests] == ["/app/"]


def test_the_metrics_port_is_never_a_decision(
    objects: list[dict[str, Any]], pod: PodPaths
) -> None:
    """/auth/../metrics matches nginx's "location = /metrics" once normalised; authproxy must
    get /metrics, never the client's path (a password oracle with a client-chosen X-Real-IP)."""
    wrong = ("Authorization", "Basic " + base64.b64encode(b"alice:guess").decode())
    with (start_echo_upstream() as app, authproxy_as_in_the_pod(objects, pod),
          nginx_as_in_the_pod(objects, pod, app.address) as ports):
        for path in ("/auth/../metrics", "/auth/%2E%2E/metrics", "/auth/x/../../metrics"):
            answer = request(ports["metrics"], path, wrong, ("X-Real-IP", "203.0.113.9"),
                             ("X-Forwarded-For", "203.0.113.9"))
            assert answer.status == 200, (path, answer.status)
            assert b"# TYPE authproxy_decisions_total" in answer.body, path
            assert "authproxy_decisions_total{" not in answer.body.decode(), path


def test_the_pod_runs_authproxy_with_two_workers(
    objects: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """workers = 2 in the ConfigMap: authproxy starts with /tmp as its container has it (the
    emptyDir), and its probes pass."""
    two = with_workers(objects, 2)
    paths = pod_paths(two, tmp_path_factory.mktemp("pod2"))
    write_config_maps(two, paths)
    users_dir = paths.here(mount_path(two, AUTHPROXY, "authproxy-users"))
    write_secret_volume(users_dir, {"users.htpasswd": users_secret_text(two, "users.htpasswd")}, 1)
    assert mount_path(two, AUTHPROXY, "authproxy-tmp") == TEMP_DIR
    with authproxy_as_in_the_pod(two, paths):
        for kind, command in probe_commands(two, paths).items():
            result = run_probe(command)
            assert result.returncode == 0, (kind, result.stderr)
        assert any(paths.here(TEMP_DIR).iterdir()), "authproxy's shared state is not in /tmp"


# -- systemd -------------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given, in order (unit files repeat keys)."""
    directives: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return unit_directives(UNIT.read_text(encoding="utf-8"))


def test_systemd_unit_is_hardened(unit: dict[str, list[str]]) -> None:
    def one(key: str) -> str:
        (value,) = unit[f"Service.{key}"]
        return value

    assert one("User") == "authproxy" or one("DynamicUser") == "yes"
    for key, value in {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native", "RuntimeDirectory": "authproxy",
        "ConfigurationDirectory": "authproxy", "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM", "Restart": "on-failure",
        "Type": "exec",  # authproxy sends no sd_notify and takes no passed sockets
    }.items():
        assert one(key) == value, key
    assert unit["Service.SystemCallFilter"][0] == "@system-service"
    # @resources is denied, but the hash threads' setpriority (app._lower_thread_priority)
    # is allowed again by a later line
    assert "@resources" in unit["Service.SystemCallFilter"][1]
    assert unit["Service.SystemCallFilter"][-1] == "setpriority"
    assert int(one("TimeoutStopSec")) > SHUTDOWN_TIMEOUT  # the drain, then SIGKILL
    assert not list(SYSTEMD.glob("*.socket"))


def test_systemd_unit_paths_agree_with_its_config(
    unit: dict[str, list[str]], tmp_path: Path
) -> None:
    (exec_start,) = unit["Service.ExecStart"]
    binary, *args = exec_start.split()
    assert binary == "/usr/local/bin/authproxy"
    assert args[:2] == ["serve", "--config"]
    config_dir = PurePosixPath("/etc", *unit["Service.ConfigurationDirectory"])
    assert PurePosixPath(args[2]) == config_dir / "authproxy.toml"
    text = (SYSTEMD / "authproxy.toml").read_text(encoding="utf-8")
    users = tmp_path / "users.htpasswd"
    users.write_text("", encoding="utf-8")
    (tmp_path / "authproxy.toml").write_text(text, encoding="utf-8")
    config = load_config(str(tmp_path / "authproxy.toml"),
                         environ={"AUTHPROXY_BASIC_USERS_FILE": str(users)})
    runtime_dir = PurePosixPath("/run", *unit["Service.RuntimeDirectory"])
    for address in config.server.listen_addresses:
        assert address.is_unix and PurePosixPath(address.path).parent == runtime_dir
    assert PurePosixPath(tomllib.loads(text)["basic"]["users_file"]).parent == config_dir
    (user,) = unit["Service.User"]
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.fail("systemd-sysusers is not installed (Debian package systemd; make test installs it)")
    (tmp_path / "root" / "etc").mkdir(parents=True)
    result = subprocess.run(
        [sysusers, "--dry-run", f"--root={tmp_path / 'root'}", str(SYSTEMD / "authproxy.sysusers")],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert f"Creating user '{user}'" in result.stdout + result.stderr


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this checkout's authproxy, which verify can
    resolve (it fails on a missing binary)."""
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        pytest.fail("systemd-analyze is not installed (Debian package systemd; make test installs it)")
    authproxy = Path(sys.executable).parent / "authproxy"
    assert os.access(authproxy, os.X_OK)
    text = UNIT.read_text(encoding="utf-8")
    assert text.count("ExecStart=/usr/local/bin/authproxy ") == 1
    copy = tmp_path / "authproxy.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/authproxy ",
                                 f"ExecStart={authproxy} "), encoding="utf-8")
    return copy


def test_systemd_analyze_verify_finds_nothing(verifiable_unit: Path) -> None:
    """verify works offline (PID 1 need not be systemd). It reports bad values and unknown
    keys on stderr and still exits 0, so both are checked."""
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(verifiable_unit)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_analyze_security_rates_the_unit_ok(verifiable_unit: Path) -> None:
    """systemd's own exposure score (0 best, 10 worst) stays at 2.0 or below ("OK")."""
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(verifiable_unit)],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
