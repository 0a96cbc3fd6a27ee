"""`finetune audit`: what the model's embeddings say about the data (near-duplicates and leakage, probably wrong
labels, the head's accuracy with its spread), read from the frozen-feature cache. Reads the dataset, never writes it.
"""
