"""The Makefile: its environment target (`make train` and `make test` set up .venv first when it is missing or older
than pyproject.toml, and not otherwise; make -n: what make would run, without running it), `make tensorboard`, and
how values reach commands: as data, never as code. Real `make` runs against a stand-in environment (VENV=venv, whose
programs print what they were given as JSON) show that a command in a value never runs, and that a run directory with
spaces, `;`, quotes or `$` reaches Python as exactly that path."""

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

pytestmark = [
    pytest.mark.slow,  # runs make, builds environments
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
]

ROOT = Path(__file__).resolve().parents[1]
SETUP = "-m venv"
MARKER = "PWNED"  # what each injected command would create in the project directory
INJECTIONS = [
    f"x; touch {MARKER}",
    f"$(touch {MARKER})",
    f"`touch {MARKER}`",
    f"x' ; touch {MARKER} ; '",
    f'x" ; touch {MARKER} ; "',
    f"x && touch {MARKER} #",
    f"x | touch {MARKER}",
    f"$(shell touch {MARKER})",  # make's own function, run when make expands the value
    f"${{x:-$(touch {MARKER})}}",
    f"x\\'; touch {MARKER}; '",
]
# a stand-in for the environment's python, torchrun and tensorboard: one JSON line, what it was given
FAKE = """#!{python}
import json, os, sys
env = {{k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME", "TRANSLATE_LAUNCH_TIME")}}
print(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "env": env}}))
"""


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment without a calling make's flags (`make test` hands its own down), plus `extra`."""
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GLOO_SOCKET_IFNAME", "HOST")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _dry_run(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["make", "-n", *args], cwd=directory, env=_environment(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _project(tmp_path: Path, programs: dict[str, str] | None = None) -> Path:
    """A copy of the Makefile with an up-to-date stand-in environment, tmp_path/venv: bin/python, bin/translate (the
    console command), bin/torchrun and bin/tensorboard print their arguments (or run `programs[name]`, a script)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (1_000_000_000, 1_000_000_000))  # older than the environment
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    for name in ("python", "translate", "torchrun", "tensorboard"):
        program = tmp_path / "venv" / "bin" / name
        program.write_text((programs or {}).get(name) or FAKE.format(python=sys.executable))
        program.chmod(0o755)
    (tmp_path / "venv" / ".installed").touch()
    return tmp_path


def _make(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`make -s <args> VENV=venv` in `directory` (-s: only the programs' output on stdout)."""
    return subprocess.run(
        ["make", "-s", "--no-print-directory", *args, "VENV=venv"],
        cwd=directory,
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _calls(done: subprocess.CompletedProcess) -> list[dict]:
    """What the stand-in programs were given, one dict per run."""
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _hydra_quoted(text: str) -> str:
    """`text` as a Hydra quoted string (override grammar: in '…' a quote is \\', the backslashes right before a quote
    or at the end are doubled) whose ${ is escaped for OmegaConf (\\${: text, not an interpolation)."""
    return "'" + re.sub(r"(\\*)('|\$\{|\Z)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text) + "'"


def _hydra_reads(override: str) -> tuple[str, object]:
    """The key and the value a Hydra command-line override sets: Hydra's parser, then OmegaConf's resolution."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.key_or_group, OmegaConf.create({"value": parsed.value()}).value


def _contains(argv: list[str], part: list[str]) -> bool:
    return any(argv[i : i + len(part)] == part for i in range(len(argv) - len(part) + 1))


@pytest.mark.parametrize("target", ["train", "test", "eval RUN=x", "compare"])
def test_environment_is_built_when_missing_or_stale_and_only_then(tmp_path, target):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    run = lambda: _dry_run(tmp_path, *target.split())  # noqa: E731

    assert SETUP in run()  # fresh clone: no environment yet
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    os.utime(tmp_path / "pyproject.toml", (1_000_000_000, 1_000_000_000))  # older than the environment
    assert SETUP not in run()
    os.utime(tmp_path / "pyproject.toml")  # edited after the environment was built
    os.utime(stamp, (1_000_000_000, 1_000_000_000))
    assert SETUP in run()
    out = run()
    assert "pip install" in out and out.index(SETUP) < out.index("'.venv/bin/python' -m", out.index("pip install"))


def test_install_always_rebuilds_and_takes_the_torch_requirement(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    out = _dry_run(tmp_path, "install", "TORCH=torch")
    assert SETUP in out and "pip install --quiet 'torch'" in out
    out = _dry_run(tmp_path, "install", f"TORCH=torch; touch {MARKER}", f"PYTHON=python3; touch {MARKER}")
    assert f"pip install --quiet 'torch; touch {MARKER}'\n" in out and f"'python3; touch {MARKER}' -m venv" in out
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize(
    "path",
    [
        "runs/a b;c",
        "runs/it's",
        'runs/say "hi"',
        "runs/back\\slash",
        "runs/ends in\\",
        "runs/quote\\'d",
        "runs/a,b=c",
        "runs/$HOME",
        "runs/${x}",
        "runs/\\${x}\\\\${y}",
        "runs/\ttab and  two spaces ",
        *(f"runs/{text}" for text in INJECTIONS),
    ],
)
def test_a_run_directory_reaches_python_exactly(tmp_path, path):
    project = _project(tmp_path)
    for target in ["eval", "translate", "export", "average"]:
        done = _make(project, target, f"RUN={path}", "eval.beam_size=5")
        assert done.returncode == 0, done.stderr
        [call] = _calls(done)
        assert call["prog"] == "translate"
        assert call["argv"] == [target, f"run={_hydra_quoted(path)}", "eval.beam_size=5"]
        assert _hydra_reads(call["argv"][1]) == ("run", path)
    assert not (project / MARKER).exists()


def test_a_run_directory_with_spaces_and_semicolons_reaches_the_real_program(tmp_path):
    """`make average` with the real `translate` command: the run directory it reports is the one given."""
    project = _project(tmp_path, {"translate": f'#!/bin/sh\nexec "{sys.executable}" -m translate "$@"\n'})
    run = tmp_path / "runs" / "a b;c 'quoted' \"too\" $HOME ${x}\\"
    run.mkdir(parents=True)
    done = _make(project, "average", f"RUN={run}")
    assert done.returncode != 0 and f"error: {run}: " in done.stderr and "not found" not in done.stderr, done.stderr
    assert not (project / MARKER).exists()


def _torch(requirement: str) -> list[str]:
    return ["-m", "pip", "install", "--quiet", requirement]


# (target and other arguments, the variable given each injection, the arguments a program gets from it)
CASES = [
    ("eval", "RUN", lambda v: [f"run={_hydra_quoted(v)}"]),
    ("translate", "RUN", lambda v: [f"run={_hydra_quoted(v)}"]),
    ("report RUNS=runs/a", "OUT", lambda v: [f"--out={v}", "--", "runs/a"]),
    ("report RUNS=runs/a", "EVAL", lambda v: [f"--eval={v}", "--", "runs/a"]),
    ("report", "RUNS", lambda v: ["--", *v.split()]),
    ("bench", "RUNS", lambda v: ["scripts/benchmark.py", "--", *v.split()]),
    ("compare", "EXPERIMENT", lambda v: [f"+experiment={_hydra_quoted(v)}"]),
    ("tensorboard", "HOST", lambda v: ["--host", v, "--port", "6006"]),
    ("install PYTHON=venv/bin/python", "TORCH", _torch),
    ("install", "PYTHON", None),  # `<PYTHON> -m venv` is no program here: it fails, running nothing else
    ("train", "model", lambda v: ["train", f"model={v}"]),
    ("translate RUN=r", "eval.src", lambda v: [f"eval.src={v}"]),
]


@pytest.mark.parametrize(("target", "variable", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_command_in_a_value_never_runs(tmp_path, target, variable, expected):
    project = _project(tmp_path)
    for value in INJECTIONS:
        done = _make(project, *target.split(), f"{variable}={value}")
        assert not (project / MARKER).exists(), (value, done.stdout, done.stderr)
        if expected is None:
            assert done.returncode != 0 and not _calls(done)
            continue
        assert done.returncode == 0, (value, done.stderr)
        assert any(_contains(call["argv"], expected(value)) for call in _calls(done)), (value, done.stdout)


@pytest.mark.parametrize("variable", ["RUN", "OUT", "EXPERIMENT", "TORCH", "HOST"])
def test_a_newline_in_a_value_is_an_error_and_nothing_runs(tmp_path, variable):
    """make would end the command at a newline (the rest: a command of its own)."""
    project = _project(tmp_path)
    target = {"RUN": "eval", "OUT": "report RUNS=a", "EXPERIMENT": "compare", "TORCH": "install", "HOST": "tensorboard"}
    done = _make(project, *target[variable].split(), f"{variable}=x\ntouch {MARKER}")
    assert done.returncode == 2 and "error: a value holds a newline" in done.stderr and not _calls(done)
    assert not (project / MARKER).exists()


NUMBERS = [("train", "NPROC"), ("compare", "SEEDS"), ("bench-peers", "UPDATES"), ("tensorboard", "PORT")]


@pytest.mark.parametrize(("target", "variable"), NUMBERS)
def test_numbers_are_digits_or_a_one_line_error(tmp_path, target, variable):
    project = _project(tmp_path)
    for value in ["x", "-1", "2 ", "2;3", *INJECTIONS]:
        done = _make(project, target, f"{variable}={value}")
        assert done.returncode == 2 and not _calls(done), (value, done.stdout)
        assert len(done.stderr.splitlines()) == 1 and f"error: {variable}=" in done.stderr, done.stderr
        assert not (project / MARKER).exists()
    if variable != "PORT":
        assert _make(project, target, f"{variable}=").returncode == 0  # not given: the default


def test_numbers_reach_the_programs(tmp_path):
    project = _project(tmp_path)
    [call] = _calls(_make(project, "train", "NPROC=2", "trainer.max_epochs=5"))
    assert call["prog"] == "torchrun"
    assert call["argv"] == ["--standalone", "--nproc_per_node=2", "-m", "translate", "train", "trainer.max_epochs=5"]
    assert call["env"]["GLOO_SOCKET_IFNAME"] == "lo" and call["env"]["TRANSLATE_LAUNCH_TIME"].isdigit()
    [call] = _calls(_make(project, "train", "NPROC=2", GLOO_SOCKET_IFNAME="eth7"))
    assert call["env"]["GLOO_SOCKET_IFNAME"] == "eth7"  # set: kept
    [call] = _calls(_make(project, "train"))
    assert call["prog"] == "translate" and call["env"]["GLOO_SOCKET_IFNAME"] is None
    [call] = _calls(_make(project, "compare", "SEEDS=3"))
    assert call["argv"] == ["train", "+experiment='bottleneck'", "trainer.seed=1234,1235,1236"]
    [call] = _calls(_make(project, "bench-peers", "UPDATES=30"))
    assert call["argv"] == ["scripts/bench_peers.py", "--updates", "30"]
    [call] = _calls(_make(project, "tensorboard", "HOST=0.0.0.0", "PORT=7000"))
    assert call["argv"] == ["--logdir", "runs", "--host", "0.0.0.0", "--port", "7000"]


def test_hydra_overrides_pass_through_each_one_word(tmp_path):
    project = _project(tmp_path)
    overrides = [
        "model=rnn_attention",
        "trainer.max_epochs=5",
        "trainer.seed=1,2",
        "+experiment=bottleneck",
        "eval.src=my file.de",
        "eval.ref='quoted, as Hydra reads it'",
        "x=a$b\\c\\\\ \t$$",
    ]
    make_variables = ["RUN=r", "RUNS=a b", "OUT=o", "NPROC=", "SEEDS=", "UPDATES=1", "PORT=1", "TORCH=t", "PYTHON=p"]
    [call] = _calls(_make(project, "train", *overrides, *make_variables, "EXPERIMENT=e", "HOST=h"))
    assert call["argv"][:1] == ["train"] and sorted(call["argv"][1:]) == sorted(overrides)
    assert _hydra_reads("eval.ref='quoted, as Hydra reads it'") == ("eval.ref", "quoted, as Hydra reads it")
    assert OverridesParser.create().parse_overrides(["trainer.seed=1,2"])[0].is_sweep_override()  # a sweep, as before


def test_venv_must_be_a_plain_path(tmp_path):
    project = _project(tmp_path)
    for value in [f"v; touch {MARKER}", "a b", "$(touch PWNED)", "v:w", "v%", ""]:
        done = subprocess.run(
            ["make", "-s", "eval", "RUN=r", f"VENV={value}"],
            cwd=project,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "error: VENV=" in done.stderr and len(done.stderr.splitlines()) == 1, value
        assert not (project / MARKER).exists()


def test_help_lists_the_targets_and_gpu_check_runs_the_prepared_script(tmp_path):
    project = _project(tmp_path)
    listed = {line.split()[0] for line in _make(project, "help").stdout.splitlines()}
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert listed == set(phony) - {"clean"} and "gpu-check" in listed
    assert _dry_run(project, "gpu-check").strip() == "bash scripts/gpu_check.sh"


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, read from /proc/net/tcp{,6}."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
                found.add(str(ipaddress.ip_address(b"".join(words))) if width == 32 else ".".join(map(str, words[0])))
    return found


TENSORBOARD = Path(sys.executable).parent / "tensorboard"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists() or not TENSORBOARD.exists(), reason="needs Linux, tensorboard")
def test_tensorboard_listens_on_this_machine_only_unless_asked(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    project = _project(tmp_path, {"tensorboard": f'#!/bin/sh\nexec "{TENSORBOARD}" "$@"\n'})
    env = _environment(HOST="my-laptop")  # shells export HOST as the machine's name: not a bind address
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "tensorboard", f"PORT={port}", "VENV=venv"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"TensorBoard on http://localhost:{port}/ (runs/)"
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "tensorboard did not start"
            time.sleep(0.2)
        assert _listening(port) <= {"127.0.0.1", "::1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert "--host '0.0.0.0' --port 7000" in _dry_run(project, "tensorboard", "HOST=0.0.0.0", "PORT=7000", "VENV=venv")
