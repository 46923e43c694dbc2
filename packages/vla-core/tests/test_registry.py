import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
from torch import nn

from vla_core import BACKBONES, HEADS, PROJECTORS, ComponentConfig, ConfigError, UnknownComponentError, build_projector
from vla_core.errors import MissingExtraError
from vla_core.registry import Registry


@dataclass(frozen=True, kw_only=True)
class TinyConfig(ComponentConfig):
    size: int = 2


def test_builtin_projectors_are_listed_and_built():
    assert {"linear", "mlp"} <= set(PROJECTORS.names())
    proj = build_projector({"type": "mlp", "in_dim": 4, "out_dim": 6})
    assert proj.out_dim == 6 and isinstance(proj.net[1], nn.GELU)


def test_unknown_type_lists_names_and_suggests():
    with pytest.raises(UnknownComponentError, match=r"unknown projector type 'lineer'\. Did you mean 'linear'\?.*linear, mlp"):
        build_projector({"type": "lineer", "in_dim": 1, "out_dim": 1})


def test_unknown_field_in_spec_is_named():
    with pytest.raises(ConfigError, match="unknown field 'outdim'.*Did you mean 'out_dim'"):
        build_projector({"type": "linear", "in_dim": 1, "outdim": 1})


def test_spec_without_type_is_rejected():
    with pytest.raises(ConfigError, match="'type' key"):
        build_projector({"in_dim": 1})


def test_duplicate_registration_raises_and_class_needs_config():
    reg = Registry("thing", "vla.test-things")

    @reg.register("a")
    class A(nn.Module):
        config_class = TinyConfig

    reg.register("a")(A)  # same class again is fine
    with pytest.raises(ValueError, match="already registered"):

        @reg.register("a")
        class B(nn.Module):
            config_class = TinyConfig

    with pytest.raises(TypeError, match="config_class"):

        @reg.register("c")
        class C(nn.Module):
            pass


PLUGIN = '''
from dataclasses import dataclass
import torch
from vla_core import ActionHead, ComponentConfig, HeadOutput

@dataclass(frozen=True, kw_only=True)
class PluginHeadConfig(ComponentConfig):
    action_dim: int
    horizon: int = 2

class PluginHead(ActionHead):
    config_class = PluginHeadConfig
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.horizon, self.action_dim = config.horizon, config.action_dim
        self.bias = torch.nn.Parameter(torch.zeros(config.action_dim))
    def forward(self, context, batch):
        return HeadOutput(loss=self.bias.sum())
    def predict_action(self, context, batch, *, noise=None, generator=None):
        return self.bias.expand(context.features.shape[0], self.horizon, -1)
'''


def _install_plugin(site, name="vla_plugin_demo", module_source=PLUGIN):
    (site / f"{name}.py").write_text(module_source)
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[vla.heads]\nplugin_head = {name}:PluginHead\n")


def test_plugin_from_an_installed_package_is_built_by_name_without_importing_it_first(tmp_path):
    _install_plugin(tmp_path)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import vla_core
        assert "plugin_head" in vla_core.HEADS.names()
        assert "vla_plugin_demo" not in sys.modules, "listing names imported the plugin"
        head = vla_core.build_head({{"type": "plugin_head", "action_dim": 3}})
        assert type(head).__module__ == "vla_plugin_demo" and head.action_dim == 3
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_plugin_with_missing_dependency_names_its_package(tmp_path):
    _install_plugin(tmp_path, name="vla_broken_plugin", module_source="import not_installed_dependency_xyz\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import vla_core
        from vla_core.errors import MissingExtraError
        try:
            vla_core.build_head({{"type": "plugin_head", "action_dim": 3}})
        except MissingExtraError as err:
            print(err)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install vla_broken_plugin" in out.stdout and "not_installed_dependency_xyz" in out.stdout, out.stderr
    assert issubclass(MissingExtraError, ImportError)


def test_global_registries_are_distinct():
    assert BACKBONES.group == "vla.backbones" and HEADS.group == "vla.heads" and PROJECTORS.group == "vla.projectors"


def test_require_names_the_extra_to_install():
    from vla_core.errors import require

    assert require("json", "json").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"'no_such_module_xyz' is required.*pip install 'pkg\[extra\]'"):
        require("no_such_module_xyz", "'pkg[extra]'")
