"""What MindSpore compiles for generate(): the prefill and decode graphs copy none of the weights.

MindSpore copies a Parameter (a ``TensorMove`` per read) when a graph reads it at two side-effect states; a
tied head read after the KV cache writes made it copy the embedding table twice per step (see
``mindformers.models.common.layers.read_now``). The graphs are read from MindSpore's own dump of them.
"""
import glob
import os
import re

import mindspore as ms

from mindformers import LlamaConfig, LlamaForCausalLM


def tied_llama():
    return LlamaForCausalLM.from_config(LlamaConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True), seed=0)


def compiled_graphs(run, folder) -> dict:
    """{file name: text} of the final graphs MindSpore compiles while ``run()`` runs."""
    ms.set_context(save_graphs=1, save_graphs_path=str(folder))
    try:
        run()
    finally:
        ms.set_context(save_graphs=0)
    graphs = {}
    for path in glob.glob(os.path.join(str(folder), "**", "hwopt_common_final_graph_*.ir"), recursive=True):
        with open(path, encoding="utf-8") as f:
            graphs[os.path.basename(path)] = f.read()
    return graphs


def copied_tensors(text: str) -> list:
    """What each ``TensorMove`` of a dumped graph copies (the line defining its input)."""
    lines = [line.strip() for line in text.splitlines()]
    defined = {line.split("(", 1)[0]: line for line in lines if line.startswith("%")}
    return [defined.get(re.search(r"TensorMove\((%\d+)\)", line).group(1), line)[:200]
            for line in lines if "= TensorMove(" in line]


def test_prefill_and_decode_copy_no_weights(tmp_path):
    model = tied_llama()
    assert model.lm_head is None  # the tied head: the case that copied
    graphs = compiled_graphs(lambda: model.generate([[5, 6, 7]], max_new_tokens=3, do_sample=False), tmp_path)
    assert len(graphs) == 2  # the prefill and the decode step
    for name, text in graphs.items():
        copies = copied_tensors(text)
        assert not copies, f"{name} copies: {copies}"
