"""Turn the chatterbot corpus into chat-format JSONL files for fine-tuning (train + eval).

Usage:
    python scripts/prepare_chatterbot.py                                  # english -> output/chatterbot/
    python scripts/prepare_chatterbot.py --languages english spanish --eval-fraction 0.1 --seed 0
    python scripts/prepare_chatterbot.py --corpus assets/chatterbot --out DIR

The corpus (``assets/chatterbot/<language>/*.yml``, unpacked by ``scripts/get_assets.py``) holds YAML files
with ``categories`` and ``conversations: [[statement, response, ...], ...]``. Each conversation becomes one
record ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}``: statements alternate
user/assistant, so a multi-turn conversation becomes a multi-turn chat; a trailing statement without a reply
is dropped. Entries that are not a list of at least two strings (a few files hold a plain string where a
pair belongs) are skipped and counted; exact duplicate chats are kept once, so no chat is in both splits.

A fixed-seed shuffle holds out ``--eval-fraction`` of the chats as ``eval.jsonl``; both files keep corpus
order and are written atomically (a reader never sees a half-written file), and again as plain text
(``train.txt`` / ``eval.txt``: one blank-line-separated document per chat) for language-model training.
Prints what it found and wrote.
Read them with ``mindformers.dataset.build_dataset(path, tokenizer)``.
"""

import argparse
import glob
import json
import os
import random
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mindformers.utils import ASSETS_DIR, atomic_write_text  # noqa: E402

Chat = Dict[str, List[Dict[str, str]]]


def conversation_to_chat(statements: Sequence[str]) -> Optional[Chat]:
    """A chatterbot conversation as a chat record, or None when it has no statement/reply pair.

    Args:
        statements: the conversation's statements, in order (user, assistant, user, ...).

    Returns:
        ``{"messages": [...]}`` with alternating user/assistant messages, ending with an assistant one.
    """
    statements = [s.strip() for s in statements]
    statements = statements[: len(statements) // 2 * 2]  # a statement without a reply teaches nothing
    if not statements or not all(statements):
        return None
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": s} for i, s in enumerate(statements)]}


def load_language(corpus: str, language: str) -> Tuple[List[Chat], int]:
    """Read every ``<corpus>/<language>/*.yml`` file.

    Args:
        corpus: the corpus folder.
        language: a language folder name (``english``).

    Returns:
        ``(chats, skipped)``: the chat records in file order and how many entries were not usable.
    """
    folder = os.path.join(corpus, language)
    files = sorted(glob.glob(os.path.join(folder, "*.yml")))
    if not files:
        available = sorted(d for d in os.listdir(corpus) if os.path.isdir(os.path.join(corpus, d)))
        raise SystemExit(f"no *.yml files in {folder}; languages in {corpus}: {available}")
    chats, skipped = [], 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            # BaseLoader keeps every scalar a string: "yes" or "42" in the corpus are text, not bool/int.
            data = yaml.load(f, Loader=yaml.BaseLoader)
        conversations = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(conversations, list):
            raise SystemExit(
                f"{path}: expected a mapping with a 'conversations' list; is this a chatterbot corpus file?"
            )
        for entry in conversations:
            chat = None
            if isinstance(entry, list) and all(isinstance(s, str) for s in entry):
                chat = conversation_to_chat(entry)
            if chat is None:
                skipped += 1
            else:
                chats.append(chat)
    return chats, skipped


def split(records: List[Chat], eval_fraction: float, seed: int) -> Tuple[List[Chat], List[Chat]]:
    """Hold out ``round(len * eval_fraction)`` records (at least one) chosen by a seeded shuffle.

    Returns:
        ``(train, eval)``, each in the original order.
    """
    n_eval = max(1, round(len(records) * eval_fraction)) if eval_fraction > 0 else 0
    if n_eval >= len(records):
        raise SystemExit(f"--eval-fraction {eval_fraction} of {len(records)} chats leaves nothing to train on")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held_out]
    evaluation = [r for i, r in enumerate(records) if i in held_out]
    return train, evaluation


def write_jsonl(path: str, records: List[Chat]) -> None:
    """Write one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_text(path: str, records: List[Chat]) -> None:
    """Write the chats as plain text for language modelling: one document per chat (its messages, one per
    line), documents separated by a blank line, atomically."""
    documents = ["\n".join(" ".join(m["content"].split()) for m in r["messages"]) for r in records]
    atomic_write_text(path, "\n\n".join(documents) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Run the conversion.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The counts printed: ``chats``, ``skipped``, ``duplicates``, ``train``, ``eval``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=os.path.join(ASSETS_DIR, "chatterbot"), help="corpus folder")
    parser.add_argument("--languages", nargs="+", default=["english"], help="language folders (default: english)")
    parser.add_argument("--out", default=os.path.join(REPO, "output", "chatterbot"), help="output folder")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="share held out for eval (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/eval shuffle (default 0)")
    args = parser.parse_args(argv)
    if not 0 <= args.eval_fraction < 1:
        parser.error(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}")
    if not os.path.isdir(args.corpus):
        raise SystemExit(f"no corpus folder at {args.corpus}; run `python scripts/get_assets.py` first")

    chats, skipped, seen = [], 0, set()
    duplicates = 0
    for language in args.languages:
        found, bad = load_language(args.corpus, language)
        skipped += bad
        kept = 0
        for chat in found:
            key = json.dumps(chat, sort_keys=True)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            chats.append(chat)
            kept += 1
        print(f"{language}: {kept} chats ({bad} unusable entries skipped)")
    if not chats:
        raise SystemExit(f"no chats found for {args.languages} in {args.corpus}")
    train, evaluation = split(chats, args.eval_fraction, args.seed)
    write_jsonl(os.path.join(args.out, "train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "eval.jsonl"), evaluation)
    write_text(os.path.join(args.out, "train.txt"), train)
    write_text(os.path.join(args.out, "eval.txt"), evaluation)
    turns = sum(sum(m["role"] == "assistant" for m in c["messages"]) for c in chats)
    print(
        f"{len(chats)} chats ({turns} assistant turns; {duplicates} duplicates dropped, {skipped} entries skipped): "
        f"{len(train)} -> {os.path.join(args.out, 'train.jsonl')}, {len(evaluation)} -> "
        f"{os.path.join(args.out, 'eval.jsonl')} (and the same as plain text in train.txt / eval.txt)"
    )
    return {"chats": len(chats), "skipped": skipped, "duplicates": duplicates, "train": len(train),
            "eval": len(evaluation)}


if __name__ == "__main__":
    main()
