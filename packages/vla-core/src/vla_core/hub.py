"""Publishing policies on the Hugging Face Hub: a model card and the upload, through ``huggingface_hub``.

:func:`model_card` writes ``README.md`` with YAML metadata (``library_name: vla``, tags, the dataset, the
components, the training config and, when present, the eval results as a ``model-index``) and a body that
says how to load the policy. :func:`push_folder` creates the repo (``HfApi.create_repo(exist_ok=True)``)
and uploads a saved policy directory with its card in one commit (``HfApi.upload_folder``).
:meth:`vla_core.Policy.push_to_hub` saves then pushes; ``vla push RUN_DIR REPO_ID`` (vla-train) pushes a
trained run with its config and eval results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from vla_core.errors import ConfigError

LIBRARY_NAME = "vla"
CARD_NAME = "README.md"
# what a policy directory holds that is worth uploading (no checkpoints, no caches)
UPLOAD_PATTERNS = ["config.json", "model.safetensors", "train_config.yaml", "eval.json", "eval.gif", "eval.png",
                   CARD_NAME]


def components(policy_config: Mapping[str, Any]) -> dict[str, str]:
    """The registered name of every component in a saved ``config.json``: ``{"policy": "vla",
    "backbone": "resnet_act", "head": "act_vae", ...}`` (each sub-mapping with a ``type``)."""
    found = {"policy": str(policy_config.get("type", "vla"))}
    for key, value in policy_config.items():
        if isinstance(value, Mapping) and isinstance(value.get("type"), str):
            found[key] = value["type"]
    return found


def _yaml(data: Any) -> str:
    import yaml  # a huggingface_hub dependency

    return yaml.safe_dump(data, sort_keys=False)


def model_card(
    policy_config: Mapping[str, Any],
    *,
    repo_id: str,
    dataset: str | None = None,
    dataset_id: str | None = None,
    train_config: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    license: str | None = "apache-2.0",
) -> ModelCard:
    """The model card of a saved policy.

    ``policy_config``: its ``config.json`` (with ``type``); ``dataset``: what it was trained on, in words
    (``"toy_reach"``, a path, a hub id); ``dataset_id``: the Hub dataset id, when there is one (goes into
    the ``datasets`` metadata); ``train_config``: the training config, embedded as YAML; ``eval_results``:
    ``eval.json`` (``success_rate``, ``episodes``, ...), written as a ``model-index`` entry."""
    parts = components(policy_config)
    if "success_rate" in (eval_results or {}) and not isinstance(eval_results["success_rate"], (int, float)):
        raise ConfigError(f"eval_results['success_rate']: expected a number, received {eval_results['success_rate']!r}")
    results = None
    if eval_results and "success_rate" in eval_results:
        results = [EvalResult(task_type="robotics", task_name="closed-loop control",
                              dataset_type=dataset_id or dataset or "unknown", dataset_name=dataset or "unknown",
                              metric_type="success_rate", metric_name="success rate",
                              metric_value=float(eval_results["success_rate"]))]
    data = ModelCardData(
        library_name=LIBRARY_NAME, license=license, pipeline_tag="robotics",
        tags=list(dict.fromkeys([LIBRARY_NAME, "robotics", *parts.values(), *tags])),
        datasets=[dataset_id] if dataset_id else None, model_name=repo_id, eval_results=results,
        vla={"components": parts},
    )
    rows = "\n".join(f"| {kind} | `{name}` |" for kind, name in parts.items())
    sections = [
        f"# {repo_id}\n",
        f"A [vla](https://github.com/vla-project/vla) policy: {', '.join(f'{k} `{v}`' for k, v in parts.items())}.\n",
        "## Use\n",
        ("```python\nfrom vla_core import load_policy\n\n"
         f'policy = load_policy("{repo_id}")  # in eval mode; policy.select_action(batch) -> actions\n```\n'),
        "Install the packages that bring its components, e.g. `pip install vla-core vla-backbones vla-heads`.\n",
        f"## Components\n\n| component | type |\n|---|---|\n{rows}\n",
    ]
    if dataset:
        sections.append(f"## Training data\n\n`{dataset}`\n")
    if train_config:
        sections.append(f"## Training config\n\n```yaml\n{_yaml(dict(train_config))}```\n")
    if eval_results:
        metrics = "\n".join(f"| {k} | {v} |" for k, v in eval_results.items() if k != "policy")
        sections.append(f"## Evaluation\n\n| metric | value |\n|---|---|\n{metrics}\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


def card_for_directory(directory: str | os.PathLike, *, repo_id: str, **kwargs: Any) -> ModelCard:
    """:func:`model_card` of a saved policy directory: reads ``config.json`` and, when present and not
    given, ``train_config.yaml`` and ``eval.json``."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if kwargs.get("train_config") is None and (directory / "train_config.yaml").is_file():
        import yaml

        kwargs["train_config"] = yaml.safe_load((directory / "train_config.yaml").read_text())
    if kwargs.get("eval_results") is None and (directory / "eval.json").is_file():
        kwargs["eval_results"] = json.loads((directory / "eval.json").read_text())
    return model_card(config, repo_id=repo_id, **kwargs)


def push_folder(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    card: ModelCard,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
):
    """Create ``repo_id`` (if needed) and upload the policy files of ``directory`` with ``card`` as
    ``README.md``, in one commit. Returns huggingface_hub's ``CommitInfo``."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory / 'config.json'} not found: not a vla policy directory")
    card.save(directory / CARD_NAME)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    return api.upload_folder(repo_id=repo_id, folder_path=directory, revision=revision, token=token,
                             commit_message=commit_message or "Upload vla policy",
                             allow_patterns=UPLOAD_PATTERNS)
