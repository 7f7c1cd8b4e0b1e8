"""visual_reco: visually similar products and search by photo for Django shops."""

__version__ = "0.1.0"
