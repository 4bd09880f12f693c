"""kinema4d: action-conditioned 4D world modeling of robots."""

from kinema4d.camera import Camera
from kinema4d.robot import Robot, actions_to_joints

__version__ = "0.1.0"
__all__ = ["Camera", "Robot", "actions_to_joints", "__version__"]
