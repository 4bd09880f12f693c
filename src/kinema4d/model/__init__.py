"""Generative model (paper Sec. 3.2): the action-conditioned diffusion world model (:mod:`.network`), its config and
shapes (:mod:`.config`), codecs (:mod:`.codec`), backbone (:mod:`.backbone`), robot conditioning
(:mod:`.conditioning`), flow-matching loss and sampling (:mod:`.sampling`), its files (:mod:`.checkpoint`: save/load
and training checkpoints); its training loop (:mod:`.train`, ``kinema4d train``), recipes (:mod:`.train_config`)
and training data (:mod:`.datasets`), the held-object prior (:mod:`.held_prior`), devices and precision
(:mod:`.device`) and loading the released Kinema4D weights (:mod:`.release`)."""
