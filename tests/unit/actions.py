"""Actions for planner/executor tests that need exact float durations (the config layer, rightly, takes only
Prometheus duration strings): the model of the action's type, built without re-validating its fields."""

from __future__ import annotations

from typing import Any

from exporter.config import (
    ActionConfig,
    BuildCacheAction,
    FreeSpaceAction,
    KeepLastAction,
    PruneDanglingAction,
    PruneUnusedAction,
)

MODELS: dict[str, type[ActionConfig]] = {
    "prune_dangling": PruneDanglingAction,
    "prune_unused": PruneUnusedAction,
    "keep_last": KeepLastAction,
    "free_space": FreeSpaceAction,
    "build_cache": BuildCacheAction,
}


def action_of(kind: str, name: str = "a", **fields: Any) -> ActionConfig:
    """An action of type `kind`; fields that type does not have (keep, target_avail_ratio…) are dropped."""
    model = MODELS[kind]
    own = {k: v for k, v in fields.items() if k in model.model_fields}
    action: ActionConfig = model.model_construct(name=name, type=kind, **own)
    return action
