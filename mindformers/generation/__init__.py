"""Text generation: settings, token choice, the generate() loop and streamers."""
from .config import GenerationConfig
from .streamers import BaseStreamer, TextIteratorStreamer, TextStreamer
from .utils import GenerationMixin
