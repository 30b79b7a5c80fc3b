"""Data: corpora of sentence pairs, the SentencePiece tokenizer, token-bucketed batches."""
