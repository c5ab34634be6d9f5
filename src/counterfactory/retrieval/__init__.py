"""Composed image retrieval: CIRR-format I/O, real Morpho-MNIST triplets, dual encoder + Combiner, Recall@K."""
