"""What happens when in a demo run: ``rollouts`` (before the link cut, the rollout of a good
version, the tampered version and the confused version, on ``releases``' mechanics), ``link``
(the link cut and heal) and ``drain`` (the hard examples reaching the hub at the end)."""
