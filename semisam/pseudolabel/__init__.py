"""The pseudo-label method: what the frozen teacher is asked and how its answers become training targets.

The teacher (:mod:`semisam.teacher`) is only the frozen model, its engine, cache and everything mode. This
package holds the method built on it, one module per rule:

- :mod:`~semisam.pseudolabel.prompts`: box (and point) prompts from a model's class probabilities, and their
  perturbations;
- :mod:`~semisam.pseudolabel.rectify`: the mean and uncertainty of the perturbed decodes, the fusion of classes,
  the rectification (teacher where sure, model where confident, ignored otherwise), per-class trust;
- :mod:`~semisam.pseudolabel.labeler`: the teacher's answers for a set of images (:class:`PseudoLabeler`:
  prompts, decodes, rectification, per-class trust calibration) and the bank of pseudo-labels;
- :mod:`~semisam.pseudolabel.pipeline`: calibrate, then label: the one pipeline every user below runs (initial
  trust, calibration items, the gate on weak students, the seeds);
- :mod:`~semisam.pseudolabel.reliability`: image-level reliability, and the selection of reliable images;
- :mod:`~semisam.pseudolabel.refresh`: the online schedule (the EMA model relabels the pool during a run);
- :mod:`~semisam.pseudolabel.rounds`: the bank of a self-training round (a trained student labels the pool, the
  most reliable images are kept); the rounds themselves run in :mod:`semisam.workflow.rounds`;
- :mod:`~semisam.pseudolabel.refine`: test-time refinement (the teacher refines a student's predictions);
- :mod:`~semisam.pseudolabel.analysis`: pseudo-labels scored against held-back labels (analysis only).
"""
