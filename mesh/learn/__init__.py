"""Learning from labels: what people labelled in the review queue makes a better version.

- ``export``: the labelled items of a model with their inputs and provenance (an ``.npz`` and a
  JSON file), for retraining anywhere; and the split of one into what a trainer sees and what
  calibrates its result (the two never share an input).
- ``train``: the user's training command, run on an export, its result checked.
- ``candidate``: what a training run produced, imported as a node loads it (``mesh models
  import``'s code), its threshold recalibrated on labelled hard cases the trainer did not see
  plus the reference data, put through the evidence gate, signed.
- ``recalibrate``: a version in the registry recalibrated on labels alone, as a new signed
  version (``mesh models recalibrate``).
- ``job``: the learn job (``mesh learn run``): export, split, train, import, recalibrate, gate,
  sign, push, and a rollout that begins in shadow. Its version passes the gates any other does.
"""
