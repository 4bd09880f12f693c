"""Generative model (paper Sec. 3.2): the action-conditioned diffusion world model, its codecs, sampling and
save/load (:mod:`.network`), its training loop, presets and checkpoints (:mod:`.train`, ``kinema4d train``), the
held-object prior (:mod:`.held_prior`), devices and precision (:mod:`.device`) and loading the released Kinema4D
weights (:mod:`.release`)."""
