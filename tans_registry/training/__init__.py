"""Meta-training of the encoders: the stage (``stage``: ``tans encoders train``), its loop with early
stopping on the validation protocols (``loop``), and the encoders' ablation bench (``ablation``).
Configs and records in ``config`` (no torch)."""
