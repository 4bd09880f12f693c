"""Evaluation of world-model rollouts: success judge (:mod:`.judge`) and quality metrics (:mod:`.metrics`)."""
