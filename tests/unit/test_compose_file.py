"""deploy/compose.yaml: what it builds and mounts exists in the repository (or is named as the
operator's to make), the configurations it mounts are the examples the services load, and no
two services listen on one port (they all share the host's network)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deployfiles import DEPLOY, REPO, broker_env

from imgline.core.config import BusSettings, load_settings

pytestmark = pytest.mark.unit

COMPOSE = DEPLOY / "compose.yaml"
#: Written by others, and mounted here before they exist (Prometheus and Grafana's files).
PENDING = {"prometheus/prometheus.yml", "prometheus/rules", "grafana/dashboards"}
#: Made by the operator, never committed: each such directory ignores all but its .gitignore.
OPERATOR_DIRS = ("tls", "secrets")
#: The pipeline's services and their configurations (the repository server reads the publisher's).
CONFIGS = {
    "trigger": "trigger",
    "builder": "builder",
    "tester": "tester",
    "publisher": "publisher",
    "repo": "publisher",
    "ledger": "ledger",
}
#: RabbitMQ's ports besides its listeners: epmd and the node's distribution port.
ERLANG_PORTS = (4369, 25672)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path relative to deploy/, container path) of each bind mount."""
    out = []
    for volume in service.get("volumes", []):
        source, target = (
            volume.split(":")[:2]
            if isinstance(volume, str)
            else (volume["source"], volume["target"])
        )
        if source.startswith("."):
            out.append((source, target))
    return out


def mounted_config(name: str) -> Path:
    """The host file a service reads as its configuration."""
    service = services()[name]
    wanted = f"/etc/imgline/{CONFIGS[name]}.toml"
    [source] = [s for s, t in bind_mounts(service) if t == wanted]
    return (DEPLOY / source).resolve()


def settings_for(name: str) -> BusSettings:
    service = CONFIGS[name]
    return load_settings(
        BusSettings, mounted_config(name), env=broker_env(service), service=service
    )


def listening_ports(name: str, service: dict[str, Any]) -> list[int]:
    """The ports a service opens on the host, from its configuration or command line."""
    if name == "rabbitmq":
        conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
        return [int(p) for p in re.findall(r"^listeners\.\w+\.\w+ = (\d+)$", conf, re.M)] + list(
            ERLANG_PORTS
        )
    if name == "prometheus":
        [address] = [a for a in service["command"] if a.startswith("--web.listen-address=")]
        return [int(address.rsplit(":", 1)[1])]
    if name == "grafana":
        return [int(service["environment"]["GF_SERVER_HTTP_PORT"])]
    settings = settings_for(name)
    if name == "repo":
        return [int(settings.consumer_config["serve_port"])]
    ports = [settings.metrics_port] if settings.metrics_port else []
    if name == "trigger":
        ports.append(int(settings.consumer_config["listen_port"]))
    return ports


def test_every_service_shares_the_hosts_network() -> None:
    """The services' metrics listen on 127.0.0.1 only: Prometheus must share their network."""
    for name, service in services().items():
        assert service.get("network_mode") == "host", name
        assert "ports" not in service, name


def test_no_two_services_listen_on_one_port() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        for port in listening_ports(name, service):
            assert port not in seen, f"{name} and {seen.get(port)} both listen on {port}"
            seen[port] = name
    assert {9410, 9411, 9412, 9413, 9414, 8470, 8090} <= set(seen)


def test_every_image_is_built_here_or_pinned() -> None:
    for name, service in services().items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
        assert tag not in (None, "latest"), name
        build = service.get("build")
        if build is None:
            continue
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), name
        assert image == f"imgline-{name}:local"
        assert dockerfile.name == f"{name}.Containerfile"


def test_every_host_path_mounted_is_in_the_repository_or_the_operators() -> None:
    for name, service in services().items():
        for source, _ in bind_mounts(service):
            path = (DEPLOY / source).resolve()
            relative = path.relative_to(REPO).as_posix()
            inside_deploy = (
                PurePosixPath(relative).relative_to("deploy").as_posix()
                if relative.startswith("deploy/")
                else None
            )
            if inside_deploy in PENDING:
                continue
            if inside_deploy is not None and inside_deploy.split("/")[0] in OPERATOR_DIRS:
                continue
            assert path.exists(), f"{name} mounts {source}, which is not in the repository"
    for directory in OPERATOR_DIRS:
        ignore = (DEPLOY / directory / ".gitignore").read_text().split()
        assert ignore[-2:] == ["*", "!.gitignore"]
    for source in (s["file"] for s in compose()["secrets"].values()):
        assert PurePosixPath(source).parts[0] in OPERATOR_DIRS


def test_every_named_volume_is_declared_and_the_store_is_shared() -> None:
    declared = set(compose()["volumes"])
    used: dict[str, list[str]] = {}
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.setdefault(source, []).append(volume)
    assert set(used) == declared
    stores = {
        settings_for(n).consumer_config["store_dir"] for n in ("builder", "tester", "publisher")
    }
    assert len(stores) == 1
    assert {v.split(":")[1] for v in used["artifacts"]} == stores
    assert services()["publisher"]["volumes"].count(f"artifacts:{stores.pop()}:ro") == 1


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "repo"])
def test_a_service_gets_the_credentials_and_certificates_its_configuration_names(name: str) -> None:
    service = services()[name]
    settings = settings_for(name)
    targets = {s["target"] for s in service["secrets"]}
    assert str(settings.tls_key) in targets
    for path in settings.consumer_config.get("secret_files", {}).values():
        assert path in targets
    mounted = {t for _, t in bind_mounts(service)}
    assert {str(settings.tls_ca_cert), str(settings.tls_cert)} <= mounted
    url = service["environment"]["IMGLINE_AMQP_URL"]
    assert url.startswith(f"amqps://{CONFIGS[name]}:${{IMGLINE_{name.upper()}_PASSWORD:?}}@")


def test_rabbitmq_gets_the_definitions_where_its_configuration_loads_them() -> None:
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    [load] = re.findall(r"^load_definitions = (\S+)$", conf, re.M)
    mounts = dict((t, s) for s, t in bind_mounts(services()["rabbitmq"]))
    assert mounts["/etc/rabbitmq/conf.d/10-defaults.conf"] == "./rabbitmq/rabbitmq.conf"
    assert mounts[load] == "./rabbitmq/definitions.json"
    tls_files = re.findall(r"^ssl_options\.\w+file = (\S+)$", conf, re.M)
    assert tls_files
    assert all(PurePosixPath(f).parent.as_posix() in mounts for f in tls_files)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    prometheus = services()["prometheus"]
    [address] = [a for a in prometheus["command"] if a.startswith("--web.listen-address=")]
    assert source["url"] == f"http://{address.split('=', 1)[1]}"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "imgline.yaml").read_text())[
        "providers"
    ]
    mounts = {t: s for s, t in bind_mounts(services()["grafana"])}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
