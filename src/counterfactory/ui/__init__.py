"""``counterfactory ui``: a local web app to paint defects (brush mask → damage type) and insert reference crops.

:mod:`.logic` does the work without the web (tested directly); :mod:`.app` lays it out with gradio (the
``ui`` extra: ``pip install counterfactory[ui]``).
"""
