"""docker/: what can be checked without a Docker engine (the project's machines have none).

The compose file parses and names its services; its mlflow service runs `tans team server`, i.e. the
command :func:`tans_registry.tracking.server_command` makes for the compose's values (the PostgreSQL
service's database, the artifacts volume, the published port) plus MLflow's auth options, and that
command, started for real on loopback, asks for an account and accepts the Host header the other services
send (``mlflow:5000``); the worker and the server reach it there. No secret is in the file; each service
mounts only its own; every published port binds loopback and the Ray head publishes none. The Dockerfiles install the package as the README Quickstart does, with pyproject's pins;
the GPU image installs onnxruntime-gpu and never the CPU-only onnxruntime; every file they COPY exists
and is left in the build context by their .dockerignore. (``docker compose config`` would validate the
file offline, but the machines' Docker client has no compose plugin, so it is not used.)
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tans_registry.tracking import server_command, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """``name -> version`` of every ``name==version`` dependency of pyproject.toml (extras included)."""
    p = _pyproject()["project"]
    deps = list(p["dependencies"]) + [d for ds in p["optional-dependencies"].values() for d in ds]
    out = {}
    for d in deps:
        name, _, version = d.partition("==")
        out[re.sub(r"\[.*\]", "", name).strip().lower()] = version.strip()
    return out


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in _instructions(path) if i == "ARG" and "=" in a)


def _pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every ``pip install`` in the Dockerfile's RUNs, build args expanded."""
    args = _args(path)
    out = []
    for instr, text in _instructions(path):
        if instr != "RUN":
            continue
        lexer = shlex.shlex(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text), posix=True,
                            punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for tok in list(lexer) + [";"]:
            if tok in ("&&", ";", "||", "|"):
                if words[:2] == ["pip", "install"]:
                    out.append(words[2:])
                words = []
            else:
                words.append(tok)
    return out


def _packages(path: Path) -> dict[str, str]:
    """Requirement names installed by the Dockerfile's pip installs -> pinned version ('' when unpinned)."""
    out = {}
    for words in _pip_installs(path):
        skip = False
        for w in words:
            if skip:
                skip = False
                continue
            if w in ("--index-url", "--extra-index-url", "-e", "-r", "-c"):
                skip = w != "-e"
                continue
            if w.startswith("-") or w.startswith("."):
                continue
            name, _, version = w.partition("==")
            out[name.lower()] = version
    return out


# ------------------------------------------------------------------------------------------- compose

def test_compose_parses_and_names_its_services():
    c = _compose()
    assert {"secrets", "postgres", "mlflow", "worker", "serve", "ray-head"} <= set(c["services"])
    s = c["services"]
    assert s["postgres"]["image"] == "postgres:15"
    assert s["ray-head"]["profiles"] == ["ray"] and "--head" in s["ray-head"]["command"]
    for name in ("secrets", "postgres", "mlflow", "worker", "serve"):
        assert "profiles" not in s[name], f"{name} must start without a profile"
    extras = set(_pyproject()["project"]["optional-dependencies"])
    for name, svc in s.items():
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"]).resolve() == ROOT, name
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
            wanted = svc["build"].get("args", {}).get("EXTRAS")
            assert wanted is None or set(wanted.split(",")) <= extras, (name, wanted)
    for volume in {v.split(":", 1)[0] if isinstance(v, str) else v["source"] for svc in s.values()
                   for v in svc.get("volumes", [])}:
        assert volume in c["volumes"], f"named volume {volume} is not declared"


def _mlflow_values(c: dict) -> dict:
    """The values the compose file gives the tracking server, read from the other services."""
    pg = c["services"]["postgres"]["environment"]
    mlflow = c["services"]["mlflow"]
    mount = next(v.split(":", 1)[1] for v in mlflow["volumes"] if isinstance(v, str) and v.split(":", 1)[0] == "mlartifacts")
    port = int(mlflow["ports"][0].split(":")[-1])
    cmd = mlflow["command"]
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",") if "--allowed-hosts" in cmd else None
    return {"backend_store_uri": f"postgresql+psycopg://{pg['POSTGRES_USER']}@postgres:5432/{pg['POSTGRES_DB']}",
            "artifacts_destination": mount, "host": "0.0.0.0", "port": port, "allowed_hosts": allowed}


def _secret_mounts(svc: dict) -> set[str]:
    """The secrets a service mounts (volume subpaths of the `secrets` volume at /run/secrets/<name>)."""
    out = set()
    for v in svc.get("volumes", []):
        if isinstance(v, dict) and v.get("source") == "secrets":
            name = v["volume"]["subpath"]
            assert v["target"] == f"/run/secrets/{name}" and v.get("read_only") is True, v
            out.add(name)
    return out


def test_the_mlflow_service_runs_tans_team_server_over_server_command_for_the_compose_values():
    """`tans team server` with the compose's values runs exactly server_command(...) plus MLflow's auth options."""
    from click.testing import CliRunner

    from tans_registry.cli import main
    from tans_registry.team import AUTH_OPTIONS

    c = _compose()
    values = _mlflow_values(c)
    cmd = c["services"]["mlflow"]["command"]
    assert cmd[:3] == ["tans", "team", "server"]
    opts = dict(zip(cmd[3::2], cmd[4::2]))
    assert opts["--backend-store-uri"] == values["backend_store_uri"] and opts["--secrets"] == "/run/secrets"
    assert opts["--artifacts-destination"] == values["artifacts_destination"]
    assert (opts["--host"], int(opts["--port"])) == (values["host"], values["port"])
    # what it starts: the one server definition, with authentication
    expected = server_command(**values, mlflow_exe="mlflow") + AUTH_OPTIONS
    assert "--app-name" in expected and expected[expected.index("--app-name") + 1] == "basic-auth"
    assert "--enable-workspaces" in expected
    res = CliRunner().invoke(main, ["team", "server", "--help"])
    for flag in opts:
        assert flag in res.output, flag
    assert c["services"]["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_no_secret_is_written_in_the_compose_file_and_each_service_mounts_only_its_own():
    c = _compose()
    text = (DOCKER / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD:" not in text and "MLFLOW_TRACKING_PASSWORD" not in text and ":mlflow@" not in text
    s = c["services"]
    assert s["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert s["secrets"]["command"][-1].startswith("tans team secrets /secrets")
    assert s["postgres"]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert _secret_mounts(s["postgres"]) == {"postgres_password"}
    assert _secret_mounts(s["mlflow"]) == {"postgres_password", "admin_password", "writer_password",
                                           "reader_password", "flask_secret_key"}
    assert _secret_mounts(s["worker"]) == _secret_mounts(s["ray-head"]) == {"writer_password"}
    assert _secret_mounts(s["serve"]) == _secret_mounts(s["serve-gpu"]) == {"reader_password", "serve_token"}
    for name, account in (("worker", "writer"), ("ray-head", "writer"), ("serve", "reader"), ("serve-gpu", "reader")):
        env = s[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == account
        assert env["TANS_TRACKING_PASSWORD_FILE"] == f"/run/secrets/{account}_password"
    assert s["serve"]["environment"]["TANS_SERVE_TOKEN_FILE"] == "/run/secrets/serve_token"


def test_every_published_port_binds_loopback_and_the_ray_head_publishes_none():
    s = _compose()["services"]
    published = {name: svc.get("ports", []) for name, svc in s.items()}
    assert published["mlflow"] and published["serve"]
    for name, ports in published.items():
        for p in ports:
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} on every interface"
    assert not published["ray-head"] and not published["postgres"]
    cmd = s["ray-head"]["command"]
    assert "--dashboard-host=127.0.0.1" in cmd and not any("0.0.0.0" in a for a in cmd), cmd


def test_the_other_services_reach_the_tracking_server_by_its_service_name_and_it_accepts_them():
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    c = _compose()
    values = _mlflow_values(c)
    uri = f"http://mlflow:{values['port']}"
    for name in ("worker", "serve", "ray-head"):
        assert c["services"][name]["environment"]["MLFLOW_TRACKING_URI"] == uri, name
    allowed = values["allowed_hosts"]
    host = f"mlflow:{values['port']}"
    assert not is_allowed_host_header(get_default_allowed_hosts(), host)  # why --allowed-hosts is needed
    assert is_allowed_host_header(allowed, host) and is_allowed_host_header(allowed, f"localhost:{values['port']}")
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    assert c["services"]["worker"]["environment"]["TANS_WORK_DIR"] == "/work"


def test_the_serve_service_serves_a_model_uri_on_its_published_port():
    for name in ("serve", "serve-gpu"):
        svc = _compose()["services"][name]
        cmd = svc["command"]
        assert cmd[:2] == ["tans", "serve"] and cmd[2].startswith("models:/"), cmd
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and "--insecure-no-auth" not in cmd
        port = cmd[cmd.index("--port") + 1]
        assert any(p.split(":")[-1] == port for p in svc["ports"]), (svc["ports"], port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, host: str, auth: str | None = None) -> int:
    headers = {"Host": host} | ({"Authorization": auth} if auth else {})
    req = urllib.request.Request(url, headers=headers)
    try:
        with _HTTP.open(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_the_compose_server_command_started_for_real_asks_for_an_account_and_accepts_the_services_host_header(tmp_path):
    """The compose's mlflow command with only its store, artifacts folder, secrets, address and port made local
    (SQLite, tmp folders, loopback, a free port): without an account a call gets 401; the writer's call with
    ``Host: mlflow:5000`` is served; an unlisted host gets MLflow's 403."""
    import base64

    cmd = list(_compose()["services"]["mlflow"]["command"])
    port = _free_port()
    secrets = tmp_path / "secrets"
    tans = [sys.executable, "-m", "tans_registry.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TANS_"))}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "NO_PROXY": "127.0.0.1"}
    assert subprocess.run(tans + ["team", "secrets", str(secrets)], env=env, capture_output=True).returncode == 0
    local = {"--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination":
             str(tmp_path / "artifacts"), "--secrets": str(secrets), "--host": "127.0.0.1", "--port": str(port),
             "--workers": "1"}
    for flag, value in local.items():
        if flag in cmd:
            cmd[cmd.index(flag) + 1] = value
        else:
            cmd += [flag, value]
    assert cmd[:3] == ["tans", "team", "server"]
    cmd = tans + cmd[1:]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while "ready on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the compose's mlflow command did not come up ({' '.join(cmd)}):\n"
                            f"{log.read_text(errors='replace')[-3000:]}", pytrace=False)
            time.sleep(0.5)
        writer = "Basic " + base64.b64encode(
            f"writer:{(secrets / 'writer_password').read_text().strip()}".encode()).decode()
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(api, "mlflow:5000") == 401
        assert _status(api, "mlflow:5000", writer) == 200
        assert _status(api, f"localhost:{port}", writer) == 200
        assert _status(api, "attacker.example:5000", writer) == 403
        assert _status(f"{base}/health", "mlflow:5000") == 200  # MLflow's own health route needs no account
        # the compose healthcheck, pointed at this server and these secrets, passes now that the accounts exist
        test = _compose()["services"]["mlflow"]["healthcheck"]["test"]
        code = test[test.index("-c") + 1].replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        ok = subprocess.run([sys.executable, "-c", code.replace("/run/secrets", str(secrets))], env=env,
                            capture_output=True, timeout=60)
        assert ok.returncode == 0, ok.stderr[-2000:]
        wrong = tmp_path / "wrong"
        wrong.mkdir()
        (wrong / "writer_password").write_text("not-the-password")
        bad = subprocess.run([sys.executable, "-c", code.replace("/run/secrets", str(wrong))], env=env,
                             capture_output=True, timeout=60)
        assert bad.returncode != 0
        # what `tans team server` started: exactly server_command(...) for these values, plus the auth options
        from tans_registry.team import AUTH_OPTIONS

        pids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
        children = [" ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode().strip("\0").split("\0"))
                    for pid in pids]
        expected = server_command(local["--backend-store-uri"], local["--artifacts-destination"], host="127.0.0.1",
                                  port=port, mlflow_exe=str(Path(sys.executable).with_name("mlflow")), workers=1,
                                  allowed_hosts=cmd[cmd.index("--allowed-hosts") + 1].split(",")) + AUTH_OPTIONS
        # ps shows the mlflow script through its interpreter: compare what follows the executable
        assert any(line.split()[-(len(expected) - 1):] == expected[1:] and expected[0] in line for line in children), \
            (children, expected)
    finally:
        stop_process_group(proc)


def _status_or_none(url: str) -> int | None:
    try:
        with _HTTP.open(url, timeout=5) as resp:
            return resp.status
    except (urllib.error.URLError, OSError):
        return None


# ----------------------------------------------------------------------------------------- Dockerfiles

def _quickstart_install() -> str:
    """The package install of the README Quickstart, e.g. ``pip install -e ".[dev]"``."""
    m = re.search(r'pip install (?:-e )?"\.\[[^\]]*\]"|pip install (?:-e )?\.(?=\s)', (ROOT / "README.md").read_text())
    assert m, "README Quickstart has no `pip install` of the package"
    return m.group(0)


def test_the_dockerfiles_bases():
    froms = {k: [a for i, a in _instructions(p) if i == "FROM"] for k, p in DOCKERFILES.items()}
    assert froms["cpu"] == ["python:3.11-slim"]
    assert len(froms["gpu"]) == 1 and re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu\d+\.\d+", froms["gpu"][0])


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_each_dockerfile_installs_the_package_as_the_quickstart_does_with_pyproject_pins(kind):
    path = DOCKERFILES[kind]
    quick = shlex.split(_quickstart_install())[2:]  # e.g. ['-e', '.[dev]']
    installs = _pip_installs(path)
    assert quick in installs, f"{path.name} does not run `pip install {' '.join(quick)}`: {installs}"
    pins, got = _pins(), _packages(path)
    assert got.get("torch") == pins["torch"] == "2.14.1" and got.get("torchvision") == pins["torchvision"] == "0.29.1"
    for name, version in got.items():
        assert name in pins, f"{path.name} installs {name}, which is no dependency of pyproject.toml"
        assert version == pins[name], f"{path.name} pins {name}=={version}, pyproject.toml {pins[name]}"
    # the CPU-only onnxruntime would shadow onnxruntime-gpu (one module, two wheels): never installed
    assert "onnxruntime" not in got and "onnxruntime" not in pins


def test_the_gpu_image_installs_onnxruntime_gpu_and_not_onnxruntime():
    got = _packages(DOCKERFILES["gpu"])
    assert got.get("onnxruntime-gpu") == _pins()["onnxruntime-gpu"]
    assert "onnxruntime" not in got
    text = DOCKERFILES["gpu"].read_text()
    assert not re.search(r"pip install[^\n&;]*\bonnxruntime(?!-gpu)(?:[=<>\s]|$)", text)
    assert "CUDAExecutionProvider" in text  # the build checks that the CUDA provider is there


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` leave ``path`` out of the context: Docker's rules (``**`` any
    number of folders, ``*`` and ``?`` within one name, a matched folder takes what is under it, the last
    matching pattern wins, ``!`` re-includes)."""
    out = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:].strip("/") if neg else p.strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        rx = rx.replace(r"\?", "[^/]")
        if re.fullmatch(rf"{rx}(?:/.*)?", path):
            out = not neg
    return out


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_file_a_dockerfile_copies_exists_and_is_in_the_build_context(kind):
    path = DOCKERFILES[kind]
    ignore = path.with_name(path.name + ".dockerignore")
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copies = [a for i, a in _instructions(path) if i in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert "--from" not in args
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"{path.name} copies {src}, which is not in the repository"
            files = [ROOT / src] if (ROOT / src).is_file() else [p for p in (ROOT / src).rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if "__pycache__" in rel or rel.endswith(".pyc"):
                    continue
                assert not _ignored(rel, patterns), f"{ignore.name} leaves {rel} out of the build context"


def test_the_tracking_server_is_healthy_only_once_the_writer_can_log_in():
    """The worker starts when the mlflow service is healthy: the healthcheck logs in as the writer, whose
    account `tans team server` creates after MLflow's /health already answers."""
    test = _compose()["services"]["mlflow"]["healthcheck"]["test"]
    code = test[test.index("-c") + 1]
    assert "/run/secrets/writer_password" in code and "users/current" in code and "/health'" not in code
    compile(code, "healthcheck", "exec")
