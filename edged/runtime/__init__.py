"""Where the KPU, vision and cameras meet: models, pipelines and the per-frame work."""
