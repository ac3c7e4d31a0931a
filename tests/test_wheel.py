"""A built wheel contains every module of the four rooms, installs on its own, and imports."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("stream", "kernels", "reconstruct", "analysis")


def _source_modules() -> set[str]:
    mods = set()
    for room in ROOMS:
        for py in (ROOT / room).rglob("*.py"):
            rel = py.relative_to(ROOT / room).with_suffix("")
            mods.add(".".join(["btomo", room, *rel.parts]).removesuffix(".__init__"))
    return mods


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    # build from a copy, so that the working tree gets no build/ or egg-info
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("btomo-*.whl")
    return whl


def test_wheel_holds_every_module_and_nothing_else_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"btomo"}
    in_wheel = {n.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    assert _source_modules() <= in_wheel, f"missing from the wheel: {_source_modules() - in_wheel}"
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_imports_every_module_from_itself(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    mods = sorted(m for m in _source_modules() if not m.endswith("__main__"))  # __main__ runs the CLI
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        # drop the editable install's finder so that only the wheel can answer
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]\n"
        f"for m in {mods!r}:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert mod.__file__.startswith({str(target)!r}), (m, mod.__file__)\n"
        "print(len(" + repr(mods) + "))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) == len(mods) >= 12
