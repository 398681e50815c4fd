"""Toy dual-encoder training run on generated data, used by tests/test_train.py (exact resume after SIGKILL).

Run: python tests/_resume_script.py --out /tmp/toy --max-steps 12 --checkpoint-every 3 --batch-size 8 --lr 0.05
"""

import argparse
import logging
import os
import signal
import sys

import _train_toy as toy

from hnjax.train import config as config_lib
from hnjax.train import loop


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_train_arguments(parser, config_lib.TrainConfig(lr=0.05, batch_size=8, warmup=0.1))
    parser.add_argument("--n-docs", type=int, default=64, help="generated documents (and queries)")
    parser.add_argument("--negatives", type=int, default=3, help="mined hard negatives per query (0: no miner)")
    parser.add_argument("--refresh-every", type=int, default=4, help="miner refresh period in steps")
    parser.add_argument("--kill-at-step", type=int, default=0, help="test only: SIGKILL this process after step N")
    args = parser.parse_args(argv)
    config = config_lib.config_from_args(args)
    queries, docs = toy.make_data(n_docs=args.n_docs)
    miner = None
    if args.negatives:
        miner = toy.make_miner(queries, docs, num_negatives=args.negatives, refresh_every=args.refresh_every)

    def kill(step, record):
        if step == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    result = loop.fit(
        config,
        params=toy.init_params(),
        loss_fn=toy.loss_fn,
        batch_fn=toy.make_batch_fn(queries, docs),
        num_examples=len(queries),
        miner=miner,
        eval_fn=lambda params, step: toy.recall_at(params, queries, docs),
        callbacks=[kill] if args.kill_at_step else [],
        extra_config={"n_docs": args.n_docs, "negatives": args.negatives, "refresh_every": args.refresh_every},
    )
    print(result.time_split)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
