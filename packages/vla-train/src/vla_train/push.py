"""``vla push RUN_DIR REPO_ID``: upload a trained policy to the Hugging Face Hub with its model card.

The card (``README.md``, written into the policy directory and uploaded with it) names the components,
the dataset (a Hub dataset id goes into the ``datasets`` metadata), embeds ``train_config.yaml`` and,
when ``vla eval`` has run, the eval results from ``eval.json``. See :mod:`vla_core.hub`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_core.hub import card_for_directory, push_folder
from vla_core.paths import is_local_path

from vla_train.config import load_yaml
from vla_train.eval import resolve_policy_dir


def dataset_of(train_config: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """``(dataset in words, Hub dataset id or None)`` from a training config's ``data`` section."""
    data = (train_config or {}).get("data")
    if not isinstance(data, Mapping) or "type" not in data:
        return None, None
    root = data.get("root")
    if isinstance(root, str) and root:
        return root, None if is_local_path(root) or Path(root).expanduser().exists() else root
    return f"{data['type']} (built into vla-train)", None


def push_run(path: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
             revision: str | None = None, commit_message: str | None = None):
    """Push the policy of a run directory (its ``pretrained/``) or a pretrained directory to ``repo_id``.
    Returns huggingface_hub's ``CommitInfo``."""
    policy_dir = resolve_policy_dir(path)
    spec_path = policy_dir / "train_config.yaml"
    train_config = load_yaml(spec_path.read_text(), str(spec_path)) if spec_path.is_file() else None
    dataset, dataset_id = dataset_of(train_config)
    card = card_for_directory(policy_dir, repo_id=repo_id, dataset=dataset, dataset_id=dataset_id,
                              train_config=train_config, tags=["vla-train"])
    return push_folder(policy_dir, repo_id, card=card, private=private, token=token, revision=revision,
                       commit_message=commit_message)
