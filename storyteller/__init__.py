"""Neural Storyteller: photo -> caption -> story.

The package holds all the logic; the notebooks, the command line (``python -m storyteller``)
and the Gradio app only call into it.
"""

__version__ = "0.1.0"
