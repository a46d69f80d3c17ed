"""P-tuning's prompt encoder (PEFT's ``PromptEncoder``): a table ``embedding`` [num_virtual_tokens, hidden]
passed through ``mlp_head`` (MLP: Linear(h, e) ReLU Linear(e, e) ReLU Linear(e, h)) or ``lstm_head`` (a
bidirectional LSTM of width e) and then ``mlp_head`` (Linear(2e, 2e) ReLU Linear(2e, h)); initialised as
torch's defaults (the table N(0, 1), linear layers Kaiming-uniform)."""
import numpy as np
from mindspore import nn, ops

from ..lora.layer import _Vector
from ..prompt_learning import default_linear as _linear


class PromptEncoder(nn.Cell):
    """``construct()`` -> the prompt table [num_virtual_tokens, hidden]."""

    def __init__(self, config, hidden: int, rng: np.random.Generator, dtype):
        super().__init__()
        width = config.encoder_hidden_size or hidden
        self.embedding = _Vector(rng.standard_normal((config.num_virtual_tokens, hidden)), dtype)
        self.lstm = config.encoder_reparameterization_type == "LSTM"
        if self.lstm:
            self.lstm_head = nn.LSTM(hidden, width, config.encoder_num_layers, has_bias=True, batch_first=True,
                                     dropout=config.encoder_dropout, bidirectional=True)
            self.mlp_head = nn.SequentialCell([_linear(2 * width, 2 * width, rng, dtype), nn.ReLU(),
                                               _linear(2 * width, hidden, rng, dtype)])
        else:
            self.mlp_head = nn.SequentialCell([_linear(hidden, width, rng, dtype), nn.ReLU(),
                                               _linear(width, width, rng, dtype), nn.ReLU(),
                                               _linear(width, hidden, rng, dtype)])

    def construct(self):
        x = self.embedding.weight
        if self.lstm:
            x = self.lstm_head(ops.expand_dims(x, 0))[0][0]
        return self.mlp_head(x)
