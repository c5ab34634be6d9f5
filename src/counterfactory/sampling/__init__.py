"""counterfactory.sampling"""
