"""Text generation: settings, token choice, the generate() loop and streamers."""
from .config import GenerationConfig
from .utils import GenerationMixin
