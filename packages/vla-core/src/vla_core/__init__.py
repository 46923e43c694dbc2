"""vla-core: the thin protocol shared by every vla package.

Batch keys and features, the Backbone / ActionHead / Projector interfaces, registries and
build-from-config, normalization, safetensors checkpoint IO and the generic :class:`VLAPolicy`.
Imports only torch, safetensors, huggingface_hub and numpy.
"""

from vla_core.actions import ActionQueue, TemporalEnsembler
from vla_core.checkpoint import (
    LoadReport,
    apply_name_mapping,
    load_checkpoint,
    load_into,
    load_tensors,
    save_safetensors,
)
from vla_core.compiled import COMPILE_MODES
from vla_core.config import ComponentConfig
from vla_core.errors import (
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    MissingExtraError,
    UnknownComponentError,
)
from vla_core.features import (
    ACTION,
    ACTION_IS_PAD,
    EMBODIMENT_ID,
    OBS_ENV_STATE,
    OBS_IMAGE_PREFIX,
    OBS_IMAGES,
    OBS_STATE,
    TASK,
    FeatureType,
    PolicyFeature,
    validate_batch,
)
from vla_core.interfaces import (
    ActionHead,
    Backbone,
    BackboneOutput,
    ContextNeeds,
    ContextSpec,
    HeadOutput,
    KVGeometry,
    Projector,
)
from vla_core.normalize import Normalizer
from vla_core.policy import PolicyConfig, VLAPolicy
from vla_core.policy_base import BasePolicyConfig, Policy, build_policy, load_policy
from vla_core.projectors import LinearProjector, MLPProjector
from vla_core.registry import (
    BACKBONES,
    HEADS,
    POLICIES,
    PROJECTORS,
    Registry,
    build_backbone,
    build_head,
    build_projector,
)
from vla_core.rtc import FlowActionHead, FlowField, RTCGuide

__version__ = "0.1.0"

__all__ = [
    "ACTION",
    "ACTION_IS_PAD",
    "BACKBONES",
    "COMPILE_MODES",
    "EMBODIMENT_ID",
    "HEADS",
    "OBS_ENV_STATE",
    "OBS_IMAGES",
    "OBS_IMAGE_PREFIX",
    "OBS_STATE",
    "POLICIES",
    "PROJECTORS",
    "TASK",
    "ActionHead",
    "ActionQueue",
    "Backbone",
    "BackboneOutput",
    "BasePolicyConfig",
    "CheckpointError",
    "CheckpointWriteError",
    "ComponentConfig",
    "ConfigError",
    "ContextNeeds",
    "ContextSpec",
    "FeatureType",
    "FlowActionHead",
    "FlowField",
    "HeadOutput",
    "KVGeometry",
    "LinearProjector",
    "LoadReport",
    "MLPProjector",
    "MissingExtraError",
    "Normalizer",
    "Policy",
    "PolicyConfig",
    "PolicyFeature",
    "Projector",
    "RTCGuide",
    "Registry",
    "TemporalEnsembler",
    "UnknownComponentError",
    "VLAPolicy",
    "apply_name_mapping",
    "build_backbone",
    "build_head",
    "build_policy",
    "build_projector",
    "load_checkpoint",
    "load_into",
    "load_policy",
    "load_tensors",
    "save_safetensors",
    "validate_batch",
]
