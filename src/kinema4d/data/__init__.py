"""Synthetic 4D data engine: the pybullet physics scene and scripted expert (:mod:`.scene`), the ``kinema4d datagen``
episode generator (:mod:`.datagen`) and the on-disk episode format with its datasets and model normalization
(:mod:`.episodes`)."""
