"""Text before the model: what a text is (`texts`), the checkpoint's fast tokenizer with
sentence-transformers' lowercasing and truncation flags (`tokenize`), and WordPiece's bounded cost
on pathological input (`wordpiece`)."""
