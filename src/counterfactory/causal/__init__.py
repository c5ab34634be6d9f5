"""counterfactory.causal"""
