"""Interactive use and exports: the 4D viewer, the sequence container and its rollout file, the rerun recording
(:mod:`.viewer`, ``kinema4d view``), mp4 / GIF / PLY exports (:mod:`.exports`), image reading, video writing and
colouring helpers (:mod:`.media`) and the gymnasium closed-loop environment (:mod:`.envs`)."""
