"""Data files the batch job and the engines share: corpus inputs (formats, rows, errors that name
file and line), their splits (from metadata only), and the embedding outputs (stored precisions,
Parquet shards, single files). None of these modules imports JAX."""
