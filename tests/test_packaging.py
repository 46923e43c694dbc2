"""Every package builds its own wheel and sdist, with its own version, and installs alone."""

import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["vla-core", "vla-backbones", "vla-heads", "vla-train"]
UV = shutil.which("uv")


def project(package):
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([UV, "build", "--all-packages", "--out-dir", str(out), "--quiet"], cwd=ROOT, check=True)
    return out


def wheel_metadata(dist, package):
    (wheel,) = dist.glob(f"{package.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name)), zf.namelist()


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_has_its_files(package):
    base = ROOT / "packages" / package
    module = package.replace("-", "_")
    for rel in ("pyproject.toml", "README.md", "CHANGELOG.md", f"src/{module}/py.typed", f"src/{module}/__init__.py"):
        assert (base / rel).is_file(), f"{package} lacks {rel}"
    assert (base / "tests").is_dir()


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_and_sdist_carry_their_own_version(dist, package):
    version = project(package)["version"]
    meta, names = wheel_metadata(dist, package)
    assert meta["Name"] == package and meta["Version"] == version
    module = package.replace("-", "_")
    assert f"{module}/py.typed" in names
    assert list(dist.glob(f"{module}-{version}.tar.gz")), f"no sdist for {package}"


def test_versions_are_independent(dist):
    # each wheel's version comes from its own pyproject, not a shared one
    for package in PACKAGES:
        meta, _ = wheel_metadata(dist, package)
        assert meta["Version"] == project(package)["version"]
    assert len({project(p)["name"] for p in PACKAGES}) == 4


def _requirement_names(meta, with_extras=False):
    names = set()
    for req in meta.get_all("Requires-Dist") or []:
        if "extra ==" in req and not with_extras:
            continue
        name = req.split(";")[0].strip()
        for sep in "<>=!~[ (":
            name = name.split(sep)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def test_vla_core_requires_only_the_thin_set(dist):
    meta, _ = wheel_metadata(dist, "vla-core")
    assert _requirement_names(meta) == {"torch", "safetensors", "huggingface-hub", "numpy"}


def test_vla_heads_does_not_require_transformers_or_torchvision(dist):
    meta, _ = wheel_metadata(dist, "vla-heads")
    required = _requirement_names(meta)
    assert "transformers" not in required and "torchvision" not in required and "vla-backbones" not in required
    assert "transformers" in _requirement_names(meta, with_extras=True), "the pi0 extra should bring transformers"


@pytest.mark.slow
def test_vla_core_installs_alone_from_its_wheel(dist, tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    subprocess.run([UV, "venv", "--quiet", "-p", sys.executable, str(venv)], check=True)
    (wheel,) = dist.glob("vla_core-*.whl")
    subprocess.run([UV, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)],
                   check=True, env=env)
    code = (
        "import sys, vla_core, importlib.util as u\n"
        "assert all(u.find_spec(m) is None for m in ('vla_backbones', 'vla_heads', 'vla_train', 'transformers',"
        " 'diffusers', 'torchvision')), 'something beyond the thin set was installed'\n"
        "print(vla_core.__version__, sorted(vla_core.PROJECTORS.names()))\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [project("vla-core")["version"], "['linear',", "'mlp']"]


LICENSE_TEXT = (ROOT / "LICENSE").read_text()


@pytest.mark.parametrize("package", PACKAGES)
def test_each_wheel_carries_the_apache_license_and_full_metadata(dist, package):
    assert "Apache License" in LICENSE_TEXT and "END OF TERMS AND CONDITIONS" in LICENSE_TEXT
    assert (ROOT / "packages" / package / "LICENSE").read_text() == LICENSE_TEXT
    meta, names = wheel_metadata(dist, package)
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    (wheel,) = dist.glob(f"{package.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(license_file).decode() == LICENSE_TEXT
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Author"]
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3" in classifiers and "Typing :: Typed" in classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Repository"] == "https://github.com/vla-project/vla"
    assert urls["Changelog"].endswith(f"packages/{package}/CHANGELOG.md")


@pytest.mark.parametrize("package", PACKAGES)
def test_torch_lower_bound_is_the_first_with_public_fsdp2(package):
    # `torch.distributed.fsdp.fully_shard` (FSDP2's public API, used by vla_core.parallel) is in torch >= 2.6;
    # 2.4 and 2.5 only had the private `torch.distributed._composable.fsdp`.
    torch_reqs = [r for r in project(package)["dependencies"] if r.startswith("torch>")]
    assert torch_reqs == ["torch>=2.6"]


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_links_work_off_the_repository(package):
    # PyPI shows the README without the repository: relative links there would break
    import re

    text = (ROOT / "packages" / package / "README.md").read_text()
    relative = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if not t.startswith(("http://", "https://"))]
    assert not relative, f"{package}/README.md has relative links: {relative}"


def test_vla_train_extras_bring_the_models_and_the_trackers():
    extras = tomllib.loads((ROOT / "packages" / "vla-train" / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["models"] == ["vla-backbones>=0.1,<0.2", "vla-heads>=0.1,<0.2"]
    assert extras["wandb"][0].startswith("wandb") and extras["trackio"][0].startswith("trackio")
    assert "wandb" not in extras["all"][0] and "trackio" not in extras["all"][0]


def test_the_built_in_configs_ship_in_the_vla_train_wheel(dist):
    _, names = wheel_metadata(dist, "vla-train")
    shipped = {Path(n).name for n in names if n.startswith("vla_train/configs/") and n.endswith(".yaml")}
    assert shipped == {p.name for p in (ROOT / "packages/vla-train/src/vla_train/configs").glob("*.yaml")}
    assert "quickstart.yaml" in shipped
