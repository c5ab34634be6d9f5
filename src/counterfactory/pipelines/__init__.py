"""Task pipelines, diffusers-style: ``check_inputs()`` + one documented ``__call__``.

The paste-back band of :class:`~counterfactory.pipelines.defect_controlnet.DefectControlNetPipeline` is set here,
without torch, so that the CLI reads the same defaults and bound without loading a model library.
"""

PASTE_BACK_DILATION = 3  # px: with paste_back=True, every pixel outside the mask dilated by this much is the input's
GENERATE_PASTE_BACK_DILATION = 8  # px: the same band for each placed mask of `generate --method controlnet`
MAX_DILATION = 64  # px; a wider band is no longer "around the mask"
