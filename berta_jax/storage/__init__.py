"""Where bytes live and how they are read: local disk and fsspec URLs with atomic, conditional writes
(`stores`), the bounded regular files of a model folder (`model_files`), and typed JSON fields whose errors
name the file and the field (`json_fields`)."""
