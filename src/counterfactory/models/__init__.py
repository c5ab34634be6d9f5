"""counterfactory.models"""
