"""The READMEs' code runs as written: every ```python block of the root and package READMEs is executed,
in order, in one fresh interpreter per README (later blocks may use earlier ones' names), from an empty
temporary directory. Files a block names as the user's own (a dataset directory) are made first by
``GIVEN``. Blocks that cannot run here (a real robot, multi-GB checkpoints, minutes of training, the test
suite itself) are listed in ``NOT_RUN`` with the reason and the test that covers them instead; a stale
entry (matching no block, or several) fails. ```bash blocks are all in ``NOT_RUN``: the commands they show
run in tests/test_install.py (from the built wheels) and the CLI tests."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = ["README.md", "packages/vla-core/README.md", "packages/vla-backbones/README.md",
           "packages/vla-heads/README.md", "packages/vla-train/README.md"]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)

# (README, text in the block) -> why it is not run here, and what covers it
NOT_RUN = {
    ("README.md", "uv run vla train quickstart"): "trains for minutes; tests/test_install.py runs "
        "`vla train quickstart --set steps=5` and `vla eval` from the built wheels",
    ("README.md", "uv run pytest"): "the test suite itself",
    ("packages/vla-backbones/README.md", 'EagleBackbone.from_pretrained("eagle_ckpt_dir"'): "needs a real Eagle "
        "checkpoint directory; tests/test_groot_policy.py loads a tiny one",
    ("packages/vla-backbones/README.md", 'PaliGemmaBackbone.from_pretrained("paligemma-3b-pt-224/"'): "needs the "
        "3B PaliGemma checkpoint; packages/vla-backbones/tests load a tiny transformers-written one",
    ("packages/vla-heads/README.md", 'load_groot_head(head, load_tensors("gr00t_n15/model.safetensors"))'):
        "needs the GR00T N1.5 3B checkpoint; tests/interop/test_groot_head_lerobot.py loads converted weights",
    ("packages/vla-train/README.md", 'pip install "vla-train[all]"'): "installs and trains for minutes; "
        "tests/test_install.py runs train and eval from the wheels, the CLI tests each command",
    ("packages/vla-train/README.md", 'pip install "vla-train[models,wandb]"'): "installs; "
        "packages/vla-train/tests/test_trackers.py trains with wandb offline",
    ("packages/vla-train/README.md", "export VLA_API_KEY="): "a long-running server; "
        "packages/vla-train/tests/test_serve.py starts `vla serve` with an API key",
    ("packages/vla-train/README.md", "WebsocketClientPolicy(\"gpu-box.local\""): "a robot loop (camera, "
        "robot, server on another machine); packages/vla-train/tests/test_serve.py drives openpi-client",
    ("packages/vla-train/README.md", "vla convert lerobot path/to/pretrained_model"): "needs a LeRobot "
        "checkpoint; tests/interop/test_act_lerobot.py converts ones LeRobot writes",
    ("README.md", "# GPU box: vla serve runs/toy_flow"): "a robot loop (robot, camera, server on another "
        "machine); packages/vla-train/tests/test_serve_rtc.py drives openpi-client with __rtc__ requests",
    ("packages/vla-train/README.md", '"__rtc__": {"prefix": chunk[s:], "delay": d}'): "a robot loop (robot, "
        "camera, server on another machine); packages/vla-train/tests/test_serve_rtc.py drives openpi-client",
    ("packages/vla-train/README.md", "vla info configs/pi0.yaml --memory"): "builds the 3B pi0 on the meta "
        "device (about a minute); packages/vla-train/tests/test_memory.py runs `vla info --memory` on pi0_tiny",
    ("packages/vla-train/README.md", "uv run vla train configs/toy_flow.yaml"): "trains for minutes; "
        "packages/vla-train/tests/test_eval_async.py runs `vla eval --async --inference-delay --rtc`",
    ("packages/vla-train/README.md", "a LeRobot 0.5.1 groot policy"): "needs a LeRobot groot checkpoint and "
        "its base model; tests/interop/test_groot_convert_lerobot.py converts ones LeRobot writes",
    ("packages/vla-train/README.md", "vla convert lerobot path/to/diffusion_policy"): "needs a LeRobot "
        "checkpoint; tests/interop/test_diffusion_lerobot_options.py converts ones LeRobot writes",
    ("packages/vla-train/README.md", "vla convert lerobot path/to/pi05_pretrained_model"): "needs a LeRobot "
        "checkpoint; tests/interop/test_pi05_lerobot.py converts ones LeRobot writes",
}

# README -> Python run first, making the files the README's blocks name as the user's own
GIVEN = {
    "packages/vla-train/README.md": textwrap.dedent("""\
        from vla_train.data.lerobot.convert_toy import export_toy_dataset
        export_toy_dataset("path/to/dataset", {"num_episodes": 4, "episode_length": 12, "image_size": 16},
                           video=False)
        """),
}


def blocks(readme: str) -> list[tuple[str, int, str]]:
    """(language, line, code) of every fenced block."""
    text = (ROOT / readme).read_text()
    return [(m[1], text.count("\n", 0, m.start()) + 2, m[2]) for m in BLOCK.finditer(text)]


def skipped(readme: str, code: str) -> bool:
    return any(r == readme and needle in code for r, needle in NOT_RUN)


def test_every_block_is_run_or_listed_and_every_listing_matches_one_block():
    for (readme, needle), reason in NOT_RUN.items():
        matches = [code for _, _, code in blocks(readme) if needle in code]
        assert len(matches) == 1, f"NOT_RUN entry {readme}: {needle!r} matches {len(matches)} blocks"
        assert reason
    for readme in READMES:
        for lang, line, code in blocks(readme):
            assert lang in ("python", "bash", "yaml", ""), f"{readme}:{line}: unexpected block language {lang!r}"
            if lang == "bash":
                assert skipped(readme, code), f"{readme}:{line}: a bash block neither run nor in NOT_RUN"
    runnable = {readme: [b for b in blocks(readme) if b[0] == "python" and not skipped(readme, b[2])]
                for readme in READMES}
    assert all(runnable.values()), f"a README without a runnable example: {runnable}"


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES)
def test_readme_python_blocks_run(readme, tmp_path):
    script = [GIVEN.get(readme, "")]
    for lang, line, code in blocks(readme):
        if lang == "python" and not skipped(readme, code):
            script.append(f"exec(compile({code!r}, {f'{readme}:{line}'!r}, 'exec'), namespace)\n")
    (tmp_path / "run_readme.py").write_text("namespace = {'__name__': '__main__'}\n" + "".join(script))
    out = subprocess.run([sys.executable, "run_readme.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=1200, check=False)
    assert out.returncode == 0, f"{readme}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"


def _merged(base: dict, section: dict) -> dict:
    out = dict(base)
    for key, value in section.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def test_readme_yaml_blocks_are_valid_config_sections():
    """Every ```yaml block, laid over the quick-start config, is a training config ``vla train`` accepts."""
    import yaml
    from vla_train.builtin_configs import resolve_config
    from vla_train.config import TrainConfig

    base = yaml.safe_load(resolve_config("quickstart").read_text())
    checked = 0
    for readme in READMES:
        for lang, line, code in blocks(readme):
            if lang == "yaml":
                section = yaml.safe_load(code)
                assert isinstance(section, dict), f"{readme}:{line}: not a mapping"
                TrainConfig.from_dict(_merged(base, section))
                checked += 1
    assert checked
