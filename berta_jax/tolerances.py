"""The bars berta-jax is held to against PyTorch, in one place for the library: the parity report
and the command line read them from here (JAX-free, so the command line can show them without
loading JAX). The tests state their own bars, the same numbers, as the specification.

float32 compute is held to max-abs differences; 16-bit compute (bfloat16, float16) cannot meet
those and is held to the cosine of every sentence embedding to the float32 reference instead.
"""

HIDDEN_TOLERANCE = 1e-4  # embeddings output and every layer's hidden states vs transformers
EMBEDDING_TOLERANCE = 1e-5  # pooled and sentence embeddings vs sentence-transformers
MIN_COSINE = 0.999  # 16-bit compute: every sentence embedding's cosine to float32
