"""Synthetic 4D data engine: the pybullet physics scene (:mod:`.scene`), what a scene holds and how it is randomized
per split (:mod:`.scene_spec`), the scripted expert, its failure variants and the policy family (:mod:`.expert`),
the ``kinema4d datagen`` episode generator (:mod:`.datagen`), the on-disk episode format with its datasets
(:mod:`.episodes`, whose items are normalized by :mod:`kinema4d.pointmap`), format conversion (:mod:`.convert`) and
the import / export of recorded datasets (:mod:`.lerobot`, :mod:`.lerobot_export`, :mod:`.recordings`)."""
