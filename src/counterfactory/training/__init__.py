"""Training loops (accelerate): base pre-training and few-shot adapters."""
