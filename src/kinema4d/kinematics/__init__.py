"""Kinematic control (paper Sec. 3.1): the robot's kinematic model and action layouts (:mod:`.robot`), the pinhole
camera (:mod:`.camera`), the robot pointmap / mask renderer (:mod:`.render`) and the ``kinema4d control`` stage that
turns an action sequence into a rendered robot pointmap video (:mod:`.control`)."""
