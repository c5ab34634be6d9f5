"""Task pipelines, diffusers-style: ``check_inputs()`` + one documented ``__call__``."""
