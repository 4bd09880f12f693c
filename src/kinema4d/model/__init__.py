"""Generative model (paper Sec. 3.2): the action-conditioned diffusion world model, its codecs, sampling and
save/load (:mod:`.network`), and its training loop, presets and checkpoints (:mod:`.train`, ``kinema4d train``)."""
