"""Interactive use and exports: the 4D viewer, rollout files and PLY / GIF / rerun exports (:mod:`.viewer`, ``kinema4d
view``), video writing and colouring helpers (:mod:`.media`) and the gymnasium closed-loop environment
(:mod:`.envs`)."""
