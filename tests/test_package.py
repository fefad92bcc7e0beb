"""reclf as users get it: build the wheel, install it outside the checkout, run it from elsewhere.

The wheel is built from a copy of the project (so the checkout gets no build/ or egg-info), with
``--no-deps --no-build-isolation`` (no network: setuptools comes from the test environment), and
installed with ``pip install --no-deps --target``. Every command then runs from an empty temporary
working folder with only that folder on PYTHONPATH (ahead of the environment's own reclf, e.g. an
editable install), and the test checks that the reclf which ran is the installed copy: the
presets, prompts and version must all come from the wheel, not from the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import reclf
from reclf import demo
from reclf.config import list_presets, to_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder the built wheel was installed into (``--target``)."""
    if not (ROOT / "pyproject.toml").is_file():  # pragma: no cover - tests run from an installed copy
        pytest.skip("not run from a source checkout")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:  # --no-build-isolation builds with this one
        pytest.fail(f"setuptools {setuptools.__version__} cannot build reclf (needs >= 77, see pyproject.toml); "
                    "run `make setup` or `pip install 'setuptools>=77'` in the test environment")
    tmp = tmp_path_factory.mktemp("wheel")
    project = tmp / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist, site = tmp / "dist", tmp / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(project)],
                   check=True, cwd=tmp)
    (wheel,) = dist.glob("reclf-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp)
    return site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "RECLF_TRACEBACK")}
    env["PYTHONPATH"] = str(site)  # the installed copy first (and only): never the checkout's src/
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture()
def elsewhere(tmp_path) -> Path:
    """An empty working folder outside the repository."""
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    assert ROOT not in cwd.parents
    return cwd


def test_version_agrees_with_the_metadata_and_the_installed_copy_is_the_one_imported(installed, elsewhere):
    py = sys.executable
    out = _run(installed, elsewhere, py, "-m", "reclf", "--version").stdout
    assert out.startswith(f"reclf {reclf.__version__} from {installed / 'reclf'} ")
    script = installed / "bin" / "reclf"  # the console script pip wrote: same answer
    assert _run(installed, elsewhere, py, str(script), "--version").stdout == out
    probe = (
        "import json, reclf; from importlib import metadata; "
        "print(json.dumps([reclf.__file__, reclf.__version__, metadata.version('reclf'), "
        "str(metadata.distribution('reclf').locate_file(''))]))"
    )
    file, version, meta, dist_root = json.loads(_run(installed, elsewhere, py, "-c", probe).stdout)
    assert Path(file) == installed / "reclf" / "__init__.py"
    assert Path(dist_root) == installed  # the metadata read is the wheel's, not the editable install's
    assert version == meta == reclf.__version__ == metadata.version("reclf")


def test_presets_are_listed_from_the_package(installed, elsewhere):
    out = _run(installed, elsewhere, sys.executable, "-m", "reclf", "presets", "--paths").stdout
    for preset in list_presets():
        assert preset.name in out and preset.description in out
        assert str(installed / "reclf" / "presets" / f"{preset.name}.yaml") in out
    assert str(ROOT) not in out


def test_pretrain_a_preset_by_name_dry_run_writes_nothing_here(installed, elsewhere):
    proc = _run(installed, elsewhere, sys.executable, "-m", "reclf", "pretrain", "demo_convirt", "train.dry_run=true",
                "train.progress=false")
    assert "dry run OK" in proc.stdout
    assert list(elsewhere.iterdir()) == []  # a dry run keeps nothing


def test_the_demo_recipe_is_the_same_from_the_wheel(installed, elsewhere):
    probe = (
        "import json; from pathlib import Path; from reclf.config import to_dict; from reclf import demo; "
        "print(json.dumps({m: to_dict(demo.demo_config(m, 0, demo.QUICK, Path('/d/synth'), Path('/d/runs'))) "
        "for m in demo.METHODS}))"
    )
    from_wheel = json.loads(_run(installed, elsewhere, sys.executable, "-c", probe).stdout)
    here = {m: to_dict(demo.demo_config(m, 0, demo.QUICK, Path("/d/synth"), Path("/d/runs"))) for m in demo.METHODS}
    assert from_wheel == json.loads(json.dumps(here))


def test_version_and_help_load_no_command_module():
    """`reclf --version` / `--help` answer without importing the commands (Lightning takes seconds)."""
    probe = (
        "import sys, contextlib, io; from reclf.cli import main\n"
        "for argv in (['--version'], ['--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(argv)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'reclf.train', 'reclf.evaluate.cli') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", ["synth", "prepare", "presets", "pretrain", "export", "evaluate", "report",
                                     "explain", "demo", "convert", "embed", "classify"])
def test_every_command_still_gets_its_arguments(command, capsys):
    from reclf.cli import COMMANDS, main

    assert command in COMMANDS
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: reclf " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["evaluate", "zeroshot", "--help"], ["evaluate", "segment", "--help"]])
def test_nested_sub_commands_get_their_arguments(argv, capsys):
    """Sub-commands of a command (evaluate TASK) inherit the lazy parser class and still get their arguments."""
    from reclf.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "usage: reclf " + " ".join(argv[:2]) in capsys.readouterr().out
