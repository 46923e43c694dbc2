"""The dependency direction and cheap imports, checked on the source and in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must not import at module level
FORBIDDEN = {
    "vla-core": {"transformers", "diffusers", "torchvision", "vla_backbones", "vla_heads", "vla_train", "yaml"},
    "vla-heads": {"transformers", "torchvision", "vla_backbones", "vla_train"},
    "vla-backbones": {"diffusers", "vla_heads", "vla_train"},
}


def module_level_imports(path: Path) -> set[str]:
    """Top-level module names imported outside functions (module body, class bodies, if/try blocks)."""
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                visit(getattr(node, "body", []))
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(ast.parse(path.read_text()).body)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_module_level_imports(package):
    offenders = []
    for path in sorted((ROOT / "packages" / package / "src").rglob("*.py")):
        bad = module_level_imports(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, "module-level imports that break the dependency rules:\n" + "\n".join(offenders)


def test_the_scanner_catches_a_heavy_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\ntry:\n    import transformers\nexcept ImportError:\n    pass\ndef f():\n    import diffusers\n")
    assert module_level_imports(f) == {"os", "transformers"}


HEAVY = ["transformers", "diffusers", "torchvision", "vla_backbones", "vla_heads", "vla_train"]


def test_importing_vla_core_and_listing_components_stays_light():
    code = (
        "import sys, vla_core\n"
        "names = vla_core.BACKBONES.names() + vla_core.HEADS.names() + vla_core.PROJECTORS.names()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing vla_core pulled in {out.stdout.strip()}"


def test_importing_vla_heads_does_not_import_transformers():
    code = "import sys, vla_heads\nprint(sorted(m for m in ['transformers', 'torchvision', 'vla_backbones'] if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
