"""counterfactory.evaluation"""
