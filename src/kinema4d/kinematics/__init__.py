"""Kinematic control (paper Sec. 3.1): the robot's kinematic model and action layouts (:mod:`.robot`), the pinhole
camera (:mod:`.camera`), the robot pointmap / mask renderer (:mod:`.render`, with its backends :mod:`.render_gl` and
:mod:`.render_embree` and the link meshes they draw, :mod:`.meshes`), the ``kinema4d control`` stage that turns an
action sequence into a rendered robot pointmap video (:mod:`.control`), SDF-to-URDF conversion (:mod:`.sdf`) and
the pointmap robustness perturbations of Tab. 4 (:mod:`.perturb`)."""
