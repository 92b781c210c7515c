"""Where bytes live and how they are read: local disk and fsspec URLs with atomic, conditional
writes (`stores`, which picks a `local.LocalStore` or a `remote.RemoteStore`, both describing files
as `file_info.FileInfo`), the bounded regular files of a model folder (`model_files`), and typed
JSON fields whose errors name the file and the field (`json_fields`)."""
