"""The Dockerfile, checked without a Docker engine: hadolint (the real binary) lints it, and its
stages, read with dockerfile-parse, are held against the repository, `make image`, the chart and the
operator. The operator target's build stage is replayed in a fresh venv; the server target's COPY
set builds the wheel (its CUDA torch is not installed here: docs/container-image.md). The builder
target is the server's stage plus a compiler; what it inherits is read through its FROM."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from orpheus_operator.labels import RUN_AS_USER
from orpheus_operator.plan import render as render_voice
from orpheus_operator.settings import DEFAULT_BUILDER_IMAGE, DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent  # the venv's bin: hadolint and the console scripts
COMPILERS = {"gcc", "g++", "cc", "clang", "make", "cmake", "build-essential", "python3-dev", "libc6-dev"}
C_COMPILERS = {"gcc", "clang"}  # what Triton looks for (or $CC) to build its launchers
CACHE_VARS = ("HOME", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_HOME")


@dataclass
class Stage:
    name: str
    base: str
    parent: Stage | None = None  # the earlier stage this one starts FROM, if any
    lines: list[tuple[str, str]] = field(default_factory=list)  # (instruction, value), comments left out

    def lineage(self) -> list[Stage]:
        """This stage and the stages it starts from, the first (FROM an image) first."""
        return [*(self.parent.lineage() if self.parent else []), self]

    @property
    def root_base(self) -> str:
        """The image the lineage starts from."""
        return self.lineage()[0].base

    def values(self, instruction: str) -> list[str]:
        """This stage's own values of `instruction`."""
        return [v for i, v in self.lines if i == instruction]

    def inherited(self, instruction: str) -> list[str]:
        """The values of `instruction` through the lineage, in build order (the last one counts)."""
        return [v for stage in self.lineage() for v in stage.values(instruction)]

    def exec_form(self, instruction: str) -> list[str]:
        """ENTRYPOINT or CMD as the image has it: inherited, except that a stage setting an
        ENTRYPOINT resets the CMD it inherits (Docker's rule)."""
        for stage in reversed(self.lineage()):
            if stage.values(instruction):
                return json.loads(stage.values(instruction)[-1])
            if instruction == "CMD" and stage.values("ENTRYPOINT"):
                return []
        raise KeyError(f"{self.name} has no {instruction}")

    def env(self) -> dict[str, str]:
        """The image's ENV, inherited ones included."""
        return dict(pair.partition("=")[::2] for value in self.inherited("ENV") for pair in shlex.split(value))

    def commands(self) -> list[list[str]]:
        """Each `&&`-joined command of every RUN of this stage, as words."""
        return [shlex.split(part) for run in self.values("RUN") for part in run.split("&&")]

    def apt_installs(self) -> set[str]:
        """The packages `apt-get install` puts in the image, through the lineage."""
        return {w for stage in self.lineage() for cmd in stage.commands() if cmd[:2] == ["apt-get", "install"]
                for w in cmd[2:] if not w.startswith("-")}

    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """(--from stage or None, sources, destination) of every COPY."""
        out = []
        for words in map(shlex.split, self.values("COPY")):
            source = next((w.removeprefix("--from=") for w in words if w.startswith("--from=")), None)
            out.append((source, [w for w in words[:-1] if not w.startswith("--")], words[-1]))
        return out


def read_stages() -> tuple[dict[str, str], dict[str, Stage]]:
    """The ARGs before the first FROM (name -> default), and each stage by name."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current = None
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            image, name = re.split(r"\s+AS\s+", value, flags=re.IGNORECASE)
            base = string.Template(image).substitute(global_args)
            current = stages[name] = Stage(name, base, parent=stages.get(base))
        elif current is None and instruction == "ARG":
            key, _, default = value.partition("=")
            global_args[key] = default
        elif current is not None and instruction != "COMMENT":
            current.lines.append((instruction, value))
    return global_args, stages


GLOBAL_ARGS, STAGES = read_stages()
FINAL = ("server", "builder", "operator")


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as Docker reads it: later lines win, a pattern also matches a file's folders."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pattern = line.removeprefix("!").strip("/")
            tokens = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern)
            regex = "".join({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(t, t if t.startswith("[") else re.escape(t))
                            for t in tokens)
            rules.append((line.startswith("!"), re.compile(regex)))
    return rules


IGNORE_RULES = _ignore_rules()


def dockerignored(rel: str) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in IGNORE_RULES:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negated
    return excluded


def context_files(src: str) -> list[Path]:
    path = REPO / src
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f for f in files if not dockerignored(f.relative_to(REPO).as_posix())]


def replay_copies(stage: Stage, root: Path) -> None:
    """Lay the stage's COPYs from the build context out under `root`, as the image would have them."""
    for source, srcs, dest in stage.copies():
        assert source is None, f"{stage.name} copies from {source}: not replayable"
        for src in srcs:
            for f in context_files(src):
                out = root / dest.lstrip("/") / (f.name if (REPO / src).is_file() else f.relative_to(REPO / src))
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)


def run(*cmd: str | Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def server_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel `pip install /src` builds in server-build, from exactly what that stage copies."""
    root, out = tmp_path_factory.mktemp("image"), tmp_path_factory.mktemp("wheel")
    replay_copies(STAGES["server-build"], root)
    package = [cmd for cmd in STAGES["server-build"].commands() if cmd[-1].startswith("/src")][-1][-1]
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out,
                 root / package.lstrip("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    return zipfile.ZipFile(next(out.glob("orpheus_tts-*.whl")))


def test_hadolint_finds_nothing_at_its_strictest_level(tmp_path):
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint missing: install the test extra (pip install -e '.[test]')"
    config = tmp_path / "hadolint.yaml"  # ours, so a user's own config cannot change the verdict
    config.write_text("failure-threshold: style\n")
    result = run(hadolint, "--config", config, "--format", "json", DOCKERFILE)
    assert (result.returncode, json.loads(result.stdout or "[]")) == (0, []), result.stdout + result.stderr

    lines = DOCKERFILE.read_text().splitlines()
    pragmas = {i: line.split("ignore=")[1].strip() for i, line in enumerate(lines) if "hadolint ignore=" in line}
    for i in pragmas:
        assert lines[i - 1].startswith("# ") and "hadolint" not in lines[i - 1], f"no reason above line {i + 1}"
    unsilenced = run(hadolint, "--config", config, "--format", "json", "--disable-ignore-pragma", DOCKERFILE)
    # Every ignore still silences something, and nothing else is silenced.
    assert {f["code"] for f in json.loads(unsilenced.stdout)} == set(",".join(pragmas.values()).split(","))


def test_copy_sources_are_in_the_build_context_and_venvs_come_from_a_stage_of_the_same_base():
    names = list(STAGES)
    for stage in STAGES.values():
        for source, srcs, _ in stage.copies():
            if source is not None:
                assert names.index(source) < names.index(stage.name), f"{stage.name} copies from later {source}"
                # The venv's python is a link to the base's interpreter: the bases must be one image.
                assert STAGES[source].root_base == stage.root_base, f"{stage.name} and {source} differ in base"
                continue
            for src in srcs:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerignored(src.strip("/")) and context_files(src), f"COPY {src}: .dockerignore drops it"


def test_final_targets_run_as_the_pods_user_with_no_pip_work_and_only_the_builder_has_a_compiler():
    assert set(FINAL) <= STAGES.keys()
    for name in FINAL:
        stage = STAGES[name]
        assert stage.inherited("USER")[-1] == f"{RUN_AS_USER}:{RUN_AS_USER}", name
        assert "devel" not in stage.root_base
        for cmd in (cmd for s in stage.lineage() for cmd in s.commands()):
            assert not any(Path(w).name.startswith("pip") for w in cmd), f"{name}: pip runs in a final stage: {cmd}"
        if name != "builder":
            assert not COMPILERS & stage.apt_installs(), f"{name} installs {COMPILERS & stage.apt_installs()}"


def test_builder_is_the_server_image_plus_a_compiler_and_the_headers_for_its_interpreter():
    """Triton builds its launchers and cuda_utils with a C compiler, libc's headers and Python.h
    while the build Job compiles; the server starts from the engine's compiled ones."""
    builder, server = STAGES["builder"], STAGES["server"]
    assert builder.parent is server  # the same venv, user and caches as the server it builds for
    added = builder.apt_installs() - server.apt_installs()
    assert C_COMPILERS & added, f"the builder installs no C compiler: {sorted(added)}"
    assert "libc6-dev" in added  # gcc only recommends it, and recommends are not installed
    (interpreter,) = {p for p in server.apt_installs() if re.fullmatch(r"python3(\.\d+)?", p)}
    assert f"{interpreter}-dev" in added, f"no headers for {interpreter}, the venv's interpreter"
    assert added <= COMPILERS, f"the builder adds more than compiling needs: {sorted(added - COMPILERS)}"
    # It is a Job: the server's health check and command do not carry over.
    assert builder.values("HEALTHCHECK") == ["NONE"]
    assert builder.exec_form("ENTRYPOINT") != server.exec_form("ENTRYPOINT")


def test_server_healthcheck_asks_the_grpc_health_command_after_a_start_period():
    server = STAGES["server"]
    options, _, command = server.values("HEALTHCHECK")[-1].partition("CMD")
    check = json.loads(command)
    assert check[:2] == [server.exec_form("ENTRYPOINT")[0], "health"]
    assert check[check.index("--server") + 1].rsplit(":", 1)[1] in server.values("EXPOSE")[-1].split()
    start_period = re.search(r"--start-period=(\d+)s", options)
    assert start_period and int(start_period[1]) >= 60, "start-up from a built engine takes minutes"
    result = run(BIN / check[0], "health", "--help")
    assert result.returncode == 0 and "--server" in result.stdout, result.stderr


@pytest.mark.parametrize("target, pyproject", [("server", "pyproject.toml"), ("operator", "operator/pyproject.toml")])
def test_entry_point_is_a_console_script_of_its_package_and_the_default_command_parses(target, pyproject):
    entrypoint, cmd = STAGES[target].exec_form("ENTRYPOINT"), STAGES[target].exec_form("CMD")
    assert entrypoint[0] in tomllib.loads((REPO / pyproject).read_text())["project"]["scripts"]
    result = run(BIN / entrypoint[0], cmd[0], "--help")  # the editable install of the same package
    assert result.returncode == 0, result.stderr
    options = set(re.findall(r"--[\w-]+", result.stdout))
    for flag in (w.split("=")[0] for w in cmd[1:]):
        assert flag in options, f"CMD's {flag} is not an option of `{entrypoint[0]} {cmd[0]}`"


def test_builder_entry_point_runs_the_module_in_its_wheel_and_takes_the_jobs_arguments(server_wheel):
    builder = STAGES["builder"]
    entrypoint, cmd = builder.exec_form("ENTRYPOINT"), builder.exec_form("CMD")
    assert entrypoint[:2] == ["python", "-m"] and builder.env()["PATH"].startswith("/opt/venv/bin:")
    assert entrypoint[2].replace(".", "/") + ".py" in server_wheel.namelist()
    assert ("server-build", "/opt/venv") in [(src, dest) for s in builder.lineage() for src, _, dest in s.copies()]
    result = run(sys.executable, *entrypoint[1:], *cmd)  # CMD is --help: a bare `docker run` shows the flags
    assert result.returncode == 0 and "--engine-hash" in result.stdout, result.stderr
    options = set(re.findall(r"--[\w-]+", result.stdout))
    (job,) = [o for o in voice_objects() if o["kind"] == "Job"]
    for flag in (a for a in job["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--")):
        assert flag in options, f"the Job passes {flag}, not an option of `{' '.join(entrypoint)}`"


def test_torch_pin_is_allowed_by_the_package_and_held_by_a_constraint():
    build = STAGES["server-build"]
    pin = dict(v.partition("=")[::2] for v in build.values("ARG"))["TORCH_VERSION"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert torch.specifier.contains(pin), f"torch=={pin} is outside the package's {torch.specifier}"
    pip_installs = [cmd for cmd in build.commands() if cmd[1:2] == ["install"] and cmd[0].endswith("/pip")]
    assert "--index-url" in pip_installs[0] and "torch==${TORCH_VERSION}" in pip_installs[0]
    for cmd in pip_installs:  # the package install, too, can never swap the CUDA build
        assert cmd[cmd.index("--constraint") + 1] == "/opt/constraints.txt"
    assert ["echo", "torch==${TORCH_VERSION}", ">", "/opt/constraints.txt"] in build.commands()


def test_server_copy_set_builds_the_wheel_with_all_three_packages(server_wheel):
    names = set(server_wheel.namelist())
    assert {"orpheus_tts/cli.py", "orpheus_bench/__init__.py", "engine_jobs/build.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "orpheus-tts = orpheus_tts.cli:main" in server_wheel.read(entry_points).decode()


def make_image_tags() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERSION", "SOURCE_URL")}
    result = run("make", "-n", "image", cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    builds = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("docker build")]
    return {words[words.index("--target") + 1]: words[words.index("-t") + 1] for words in builds}


def test_image_names_and_commands_match_make_image_the_chart_and_the_operator():
    tags = make_image_tags()
    assert set(tags) == set(FINAL)
    chart = yaml.safe_load((REPO / "charts/orpheus-tts/Chart.yaml").read_text())
    for name in FINAL:
        assert "VERSION" in STAGES[name].values("ARG")  # the stage takes the global default into its labels
        default_version = GLOBAL_ARGS["VERSION"]
        assert tags[name].endswith(f":{chart['appVersion']}") and default_version == chart["appVersion"]

    with helm.Chart.load(REPO / "charts/orpheus-tts") as loaded:
        rendered = loaded.render(values=None, name="orpheus", namespace="tts", is_install=True)
    operator_pod = yaml.safe_load(rendered["orpheus-tts/templates/deployment.yaml"])["spec"]["template"]["spec"]
    container = operator_pod["containers"][0]
    assert container["image"] == tags["operator"]
    assert container["command"] == STAGES["operator"].exec_form("ENTRYPOINT")
    assert container["args"][0] == STAGES["operator"].exec_form("CMD")[0]
    assert str(container["ports"][0]["containerPort"]) in STAGES["operator"].values("EXPOSE")[-1].split()
    assert operator_pod["securityContext"]["runAsUser"] == RUN_AS_USER
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ORPHEUS_OPERATOR_DEFAULT_IMAGE"] == DEFAULT_IMAGE == tags["server"]
    assert env["ORPHEUS_OPERATOR_DEFAULT_BUILDER_IMAGE"] == DEFAULT_BUILDER_IMAGE == tags["builder"]

    # The server pods run the server target's command, the build Job the builder's (the Job
    # names it as `command`, so it must be the image's ENTRYPOINT, not something beside it).
    for obj in voice_objects():
        container = obj["spec"]["template"]["spec"]["containers"][0]
        target = image_target(container["image"])
        assert target == {"Deployment": "server", "Job": "builder"}[obj["kind"]], obj["kind"]
        assert container["command"] == STAGES[target].exec_form("ENTRYPOINT")


def image_target(image: str) -> str:
    """The Dockerfile target that `make image` tags as `image`."""
    (target,) = [name for name, tag in make_image_tags().items() if tag == image]
    return target


def voice_objects() -> list[dict]:
    """A voice without spec.image or spec.builderImage, rendered with the operator's defaults."""
    body = yaml.safe_load((REPO / "examples/voice-rtx4090-conversational.yaml").read_text())
    body["spec"].pop("image", None)
    body["spec"].pop("builderImage", None)
    return [o for o in render_voice(body) if o["kind"] in ("Deployment", "Job")]


def test_caches_lie_on_volumes_the_operators_pods_can_write():
    for obj in voice_objects():
        pod = obj["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        image_env = STAGES[image_target(container["image"])].env()  # the image this pod runs
        env = {**image_env, **{e["name"]: e["value"] for e in container["env"]}}
        writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
        for var in CACHE_VARS:
            assert any(Path(m) in (Path(env[var]), *Path(env[var]).parents) for m in writable), (
                f"{obj['kind']}: {var}={env[var]} is on the read-only root (writable: {writable})")


@pytest.mark.timeout(900)
def test_operator_target_installs_in_a_clean_venv_without_torch_and_starts(tmp_path):
    """The operator's build stage replayed: its COPYs, then each RUN command with the in-image paths
    under a scratch root; then the ENTRYPOINT's CMD subcommand with --help."""
    operator = STAGES["operator"]
    (source, _, venv), = [c for c in operator.copies() if c[0] is not None]
    build = STAGES[source]
    replay_copies(build, tmp_path)
    for cmd in build.commands():
        words = [str(tmp_path / w.lstrip("/")) if w.startswith("/") else w for w in cmd]
        words[0] = sys.executable if words[0] == "python" else words[0]
        assert Path(words[0]).name.startswith(("python", "pip")), f"cannot replay {cmd}"
        result = run(*words, timeout=600, env={**os.environ, **build.env()})
        assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}{result.stderr[-3000:]}"

    bin_dir = tmp_path / venv.lstrip("/") / "bin"
    result = run(bin_dir / operator.exec_form("ENTRYPOINT")[0], operator.exec_form("CMD")[0], "--help")
    assert result.returncode == 0, result.stderr
    no_torch = run(bin_dir / "python", "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
