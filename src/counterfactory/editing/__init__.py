"""Text counterfactuals: captions from measurement and caption perturbers."""
