"""Evaluation of world-model rollouts: the metric definitions (:mod:`.metrics`) and the feature networks behind
LPIPS / FID / FVD (:mod:`.featurenets`), the automatic success judge (:mod:`.judge`), the video / geometry / object
protocol of ``kinema4d eval`` (:mod:`.evaluate`) and its report pages (:mod:`.report`), and the policy evaluation
and ranking of ``kinema4d eval policy`` (:mod:`.policy`)."""
