"""The networks and what sits on them: one folder per model family (`bert/`: config, model, HF name
table, per-layer parameter view) registered by `model_type` (`registry`), the attention kernels
every family uses (`attention`; the fused calls in `fused_attention`), and sentence pooling
(`pooling`, on device; `vectors`, on the host)."""
