"""kinema4d: action-conditioned 4D world modeling of robots."""

from kinema4d.kinematics.camera import Camera
from kinema4d.kinematics.robot import Robot, actions_to_joints

__version__ = "0.1.0"
__all__ = ["Camera", "Robot", "Rollout", "Simulator", "actions_to_joints", "__version__"]

_LAZY = {"Simulator": "kinema4d.simulator", "Rollout": "kinema4d.simulator"}


def __getattr__(name: str):
    """``kinema4d.Simulator`` / ``kinema4d.Rollout`` import torch + diffusers: load them on first access only."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kinema4d' has no attribute {name!r}")
