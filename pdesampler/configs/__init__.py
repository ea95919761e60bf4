"""The run configs (Hydra): ``config.yaml`` and its groups."""
