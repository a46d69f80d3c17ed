"""Run a MindFormers-style YAML from the shell: train, fine-tune, evaluate or predict.

Usage:
    python run_mindformer.py --config configs/smollm2/finetune_135m_lora.yaml --run_mode finetune
    python run_mindformer.py --config CONFIG --run_mode predict --predict_data "Who are you?"
    python run_mindformer.py --config CONFIG --run_mode finetune training.learning_rate=1e-4 training.max_steps=20
    bash scripts/msrun_launcher.sh "run_mindformer.py --config CONFIG --run_mode finetune --use_parallel True" 2

``section.key=value`` arguments override the YAML (values are parsed as YAML: 1e-4, true, [a, b]).
"""
import argparse
import json
import sys


def apply_override(config: dict, assignment: str) -> None:
    """Set ``a.b.c=value`` in the nested ``config``; unknown sections are created (and then validated)."""
    from mindformers.presets import parse_yaml  # 1e-4 is a number, as the usage above says

    if "=" not in assignment:
        raise SystemExit(f"override {assignment!r} is not of the form section.key=value")
    path, value = assignment.split("=", 1)
    keys = path.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SystemExit(f"override {assignment!r}: {key!r} is not a section")
    node[keys[-1]] = parse_yaml(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run YAML (model, training, datasets)")
    parser.add_argument("--run_mode", default="finetune", choices=["train", "finetune", "eval", "predict"])
    parser.add_argument("--use_parallel", default="False", help="True under msrun: data parallel over the workers")
    parser.add_argument("--train_dataset", help="overrides train_dataset.path")
    parser.add_argument("--eval_dataset", help="overrides eval_dataset.path")
    parser.add_argument("--predict_data", help="text to complete (predict mode)")
    parser.add_argument("--load_checkpoint", help="weights to start from / evaluate / predict with")
    parser.add_argument("--resume_training", default=None, help="True (latest checkpoint) or a checkpoint directory")
    parser.add_argument("--output_dir", help="overrides training.output_dir")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)

    from mindformers import Trainer, init_context
    from mindformers.presets import load_yaml

    config = load_yaml(args.config)
    for assignment in args.overrides:
        apply_override(config, assignment)
    if args.train_dataset:
        apply_override(config, f"train_dataset.path={args.train_dataset}")
    if args.eval_dataset:
        apply_override(config, f"eval_dataset.path={args.eval_dataset}")
    if args.output_dir:
        apply_override(config, f"training.output_dir={args.output_dir}")
    use_parallel = str(args.use_parallel).lower() in ("1", "true", "yes")
    rank, size = init_context(use_parallel, config.pop("context", None), config.pop("parallel", None))
    trainer = Trainer(args=config)
    resume = {"true": True, "false": None, None: None}.get(str(args.resume_training).lower() if args.resume_training else None,
                                                           args.resume_training)
    if args.run_mode == "train":
        state = trainer.train(train_checkpoint=args.load_checkpoint, resume_training=resume)
        result = {"global_step": state.global_step}
    elif args.run_mode == "finetune":
        state = trainer.finetune(finetune_checkpoint=args.load_checkpoint, resume_training=resume)
        result = {"global_step": state.global_step}
    elif args.run_mode == "eval":
        result = trainer.evaluate(eval_checkpoint=args.load_checkpoint)
    else:
        if not args.predict_data:
            raise SystemExit("--run_mode predict needs --predict_data")
        result = trainer.predict(input_data=args.predict_data, predict_checkpoint=args.load_checkpoint)
    if rank == 0:
        print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
