"""Generative model (paper Sec. 3.2): the action-conditioned diffusion world model (:mod:`.network`), its config and
shapes (:mod:`.config`), codecs (:mod:`.codec`), backbone (:mod:`.backbone`), robot conditioning
(:mod:`.conditioning`), flow-matching loss and sampling (:mod:`.sampling`) and save/load (:mod:`.checkpoint`); its
training loop, presets and checkpoints (:mod:`.train`, ``kinema4d train``), the held-object prior
(:mod:`.held_prior`), devices and precision (:mod:`.device`) and loading the released Kinema4D weights
(:mod:`.release`)."""
