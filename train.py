"""Train TinyGPT on prepare_data.py's memmaps. `python train.py --help` lists every option.

    python train.py --data-dir data/tinystories --out-dir out          # the reference 30M model
    python train.py --preset tiny --device cpu                          # a couple of minutes on a CPU
    torchrun --nproc_per_node=4 train.py ...                            # many GPUs (DDP)
"""
import argparse
import logging
import os
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from tinygpt.cli import add_dataclass_args, config_from_args
from tinygpt.data.sources import DataError
from tinygpt.device import set_malloc_thresholds
from tinygpt.model.gpt import GPTConfig
from tinygpt.model.checkpoint import CheckpointError
from tinygpt.training.config import PRESETS, TrainConfig
from tinygpt.training.distributed import cleanup_distributed, launch_info


def parse(argv: list[str] | None) -> tuple[GPTConfig, TrainConfig]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    preset = pre.parse_known_args(argv)[0].preset
    model_base, train_base = PRESETS[preset]
    parser = argparse.ArgumentParser(description="Train TinyGPT.", parents=[pre],
                                     epilog="Defaults shown are the chosen preset's.")
    add_dataclass_args(parser, TrainConfig, "training", train_base)
    add_dataclass_args(parser, GPTConfig, "model shape (ignored with --resume: the checkpoint's wins)", model_base)
    args = parser.parse_args(argv)
    return config_from_args(model_base, args), config_from_args(train_base, args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        model_config, config = parse(argv)
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    # small models train faster keeping freed buffers; large ones hold less memory returning them
    set_malloc_thresholds(config.batch_size * model_config.block_size * model_config.n_embd * model_config.n_layer
                          < 8_000_000)
    from tinygpt.training.distributed import RankFailed  # torch import after --help
    from tinygpt.training.trainer import Trainer, TrainingError

    trainer = None
    try:
        with logging_redirect_tqdm():
            trainer = Trainer(model_config, config, launch_info(os.environ))
            trainer.run()
        if config.push_to_hub and trainer.dist.is_main:
            from tinygpt.sharing.hub import push
            push(f"{config.out_dir}/best", config.push_to_hub)
    except (DataError, CheckpointError, ValueError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, RankFailed, OSError) as e:  # OSError: a full disk or an unwritable --out-dir
        print(f"train.py: {type(e).__name__ if isinstance(e, OSError) else 'error'}: {e}", file=sys.stderr)
        return 1
    finally:
        if trainer is not None:
            cleanup_distributed(trainer.dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
