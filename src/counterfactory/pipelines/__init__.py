"""counterfactory.pipelines"""
