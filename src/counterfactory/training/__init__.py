"""counterfactory.training"""
